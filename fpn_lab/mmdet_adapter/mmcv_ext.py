"""Which ``mmcv._ext`` this process uses: mmcv's compiled extension, or fpn_lab's kernels on
torchvision (:mod:`fpn_lab.mmdet_adapter.mmcv_ops`) standing in for it under ``mmcv-lite``.

Every module of ``mmcv.ops`` loads ``mmcv._ext`` when imported, and mmdet imports ``mmcv.ops``
with its heads, necks and losses. ``fpn_lab.mmdet_adapter`` calls :func:`install` when it is
first imported, before anything of mmdet: with ``mmcv-lite`` it registers :data:`EXT` as
``mmcv._ext``, so mmcv's own Python wrappers (autograd functions, modules, ``batched_nms``) run
on fpn_lab's kernels. This module imports neither torch nor mmcv; the kernels load on the first
look-up (which ``mmcv.ops`` makes as it imports).

The choice, by the environment variable ``FPN_LAB_MMCV``:

* unset: mmcv's compiled extension where the installed mmcv has one (``FPN_LAB_MMCV=compiled
  make setup`` builds it), fpn_lab's kernels otherwise (``mmcv-lite``, the default set-up);
* ``lite``: fpn_lab's kernels even where the compiled extension is installed;
* ``compiled``: the compiled extension; an error where it is not installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

from fpn_lab.errors import ModelError, OpNotAvailableError

ENV = "FPN_LAB_MMCV"

#: The ``mmcv._ext`` functions that :mod:`~fpn_lab.mmdet_adapter.mmcv_ops` provides.
PROVIDED_FUNCTIONS = (
    "nms", "deform_conv_forward", "deform_conv_backward_input", "deform_conv_backward_parameters",
    "modulated_deform_conv_forward", "modulated_deform_conv_backward", "roi_align_forward", "roi_align_backward",
    "sigmoid_focal_loss_forward", "sigmoid_focal_loss_backward", "ms_deform_attn_forward", "ms_deform_attn_backward")


def compiled_ext_path() -> Path | None:
    """The compiled ``mmcv/_ext*.so`` of the installed mmcv, or None (``mmcv-lite`` or no mmcv).
    Looked up on disk, without importing mmcv."""
    spec = importlib.util.find_spec("mmcv")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("_ext*.so")) + sorted(Path(folder).glob("_ext*.pyd"))
        if found:
            return found[0]
    return None


def _wanted() -> str:
    value = os.environ.get(ENV, "").strip().lower()
    if value not in ("", "lite", "compiled"):
        raise ModelError(f"{ENV}={os.environ[ENV]!r} is not understood: expected 'lite' (mmcv's operators on "
                         "torchvision's kernels), 'compiled' (mmcv's compiled extension) or unset (compiled when "
                         f"installed, else lite). Fix: unset {ENV} or set it to one of these.")
    return value


def ops_path() -> str:
    """``"torchvision"`` when mmcv's operators run on fpn_lab's kernels in this process,
    ``"compiled"`` when on mmcv's compiled extension.

    Raises:
        ModelError: ``FPN_LAB_MMCV`` has an unknown value, or is ``compiled`` where the installed
            mmcv has no compiled extension.
    """
    if sys.modules.get("mmcv._ext") is EXT:
        return "torchvision"
    wanted = _wanted()
    if wanted == "lite":
        return "torchvision"
    if compiled_ext_path() is not None:
        return "compiled"
    if wanted == "compiled":
        raise ModelError(f"{ENV}=compiled but the installed mmcv has no compiled extension (mmcv/_ext*.so): it is "
                         "mmcv-lite. Fix: run `FPN_LAB_MMCV=compiled make setup` (builds mmcv 2.1.0 with its ops), "
                         f"or unset {ENV} to use torchvision's kernels.")
    return "torchvision"


def install() -> str:
    """Register :data:`EXT` as ``mmcv._ext`` when fpn_lab's kernels are to be used (see the module
    docstring); cheap and idempotent. Returns :func:`ops_path`.

    Raises:
        ModelError: as :func:`ops_path`, or ``FPN_LAB_MMCV=lite`` after this process already
            imported the compiled extension.
    """
    path = ops_path()
    loaded = sys.modules.get("mmcv._ext")
    if path == "torchvision" and loaded is None:
        sys.modules["mmcv._ext"] = EXT
    elif path == "torchvision" and loaded is not EXT:
        raise ModelError(f"{ENV}=lite but mmcv's compiled extension was already imported in this process. Fix: set "
                         f"{ENV} before anything imports mmcv.ops (e.g. before starting Python).")
    return path


def not_provided(name: str):
    """A function that raises :class:`~fpn_lab.errors.OpNotAvailableError` naming the extension
    function ``name`` when called."""

    def call(*args, **kwargs):
        raise OpNotAvailableError(
            f"mmcv operator '{name}' is not available: fpn_lab runs mmcv without its compiled extension (mmcv-lite) "
            f"and provides {', '.join(PROVIDED_FUNCTIONS)} on torchvision's kernels. Fix: pick a preset that does "
            "not need it, or install the compiled mmcv: FPN_LAB_MMCV=compiled make setup.")

    call.__name__ = name
    return call


class _Ext(types.ModuleType):
    """Stands in for ``mmcv._ext``: :data:`PROVIDED_FUNCTIONS` from
    :mod:`~fpn_lab.mmdet_adapter.mmcv_ops` (imported on the first look-up), and for any other name
    :func:`not_provided`, so that every module of ``mmcv.ops`` imports."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in PROVIDED_FUNCTIONS:
            value = getattr(importlib.import_module("fpn_lab.mmdet_adapter.mmcv_ops"), name)
        else:
            value = not_provided(name)
        setattr(self, name, value)
        return value


#: The module :func:`install` registers as ``mmcv._ext``.
EXT = _Ext("mmcv._ext", "mmcv's compiled operators on torchvision's kernels (fpn_lab.mmdet_adapter.mmcv_ops)")
# A spec without a loader: importlib.util.find_spec works on it, and mmengine's mmcv_full_available()
# (pkgutil.find_loader) says False, as it should: mmcv's other compiled layers (SyncBatchNorm...) are absent.
EXT.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None, origin="fpn_lab.mmdet_adapter.mmcv_ops")
