"""Pretrained weights: download with a hash check, local files, and safe loading."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fpn_lab.errors import ModelError, WeightsUnavailableError

_HASH = re.compile(r"-([0-9a-f]{8,})\.pth$")


def weights_cache_dir() -> Path:
    """``$FPN_LAB_WEIGHTS`` or ``~/.cache/fpn_lab/weights``."""
    return Path(os.environ.get("FPN_LAB_WEIGHTS", Path.home() / ".cache" / "fpn_lab" / "weights"))


def hash_prefix(filename: str) -> str | None:
    """The sha256 prefix OpenMMLab puts at the end of checkpoint names (``..._20200130-c2398f9e.pth``)."""
    m = _HASH.search(filename)
    return m.group(1) if m else None


def download_weights(url: str, *, cache_dir: str | Path | None = None) -> Path:
    """Return the local path of ``url``'s checkpoint, downloading it into the cache if missing.

    The file's sha256 must start with the hash prefix in its name (torch.hub's check).

    Raises:
        WeightsUnavailableError: the download failed (e.g. offline); the message names the URL
            and the path where fpn_lab looks for the file, so it can be put there by hand.
    """
    path = Path(cache_dir or weights_cache_dir()) / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix(path.name), progress=False)
    except Exception as e:  # URLError, socket errors, hash mismatch: all mean "no usable file"
        raise WeightsUnavailableError(
            f"could not download pretrained weights from {url} ({type(e).__name__}: {e}). Without network access, "
            f"download the file elsewhere and put it at {path} (or set the notebook parameter weights to its path), "
            "or train from scratch with pretrained=False.") from None
    return path


#: Prefixes stripped from every key when all keys carry them: ``module.`` (DistributedDataParallel,
#: DataParallel) and ``detector.`` (fpn_lab's :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`).
KEY_PREFIXES = ("module.", "detector.")
#: :func:`load_matching` refuses a checkpoint that fills fewer than this fraction of the model's tensors.
MIN_LOADED_FRACTION = 0.5


def read_checkpoint(path: str | Path):
    """``torch.load(path, weights_only=True)`` with the OpenMMLab allow-list (no arbitrary code runs).

    Reads fpn_lab checkpoints, mmdet checkpoints (``state_dict`` + ``meta``), mmengine ``Runner``
    checkpoints (``epoch_N.pth``: also ``message_hub``, ``optimizer``) and plain state dicts.

    Raises:
        WeightsUnavailableError: the file does not exist.
        ModelError: the file is not a torch checkpoint, or its pickle needs a global outside the
            allow-list (the message names it).
    """
    import pickle

    from fpn_lab.mmdet_adapter.safe_load import allowed_globals

    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}.")
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, TypeError) as e:
        # torch's safe unpickler fails on a file that is not a pickle with whatever error its bytes cause
        detail = (str(e).split("WeightsUnpickler error:")[-1].strip().splitlines() or [type(e).__name__])[0]
        if "Unsupported global" in detail:
            raise ModelError(f"{path}: cannot be loaded safely ({detail}). fpn_lab loads weights with "
                             "torch.load(weights_only=True); re-save the weights as a plain state dict "
                             "(torch.save(model.state_dict(), path)) from the tool that wrote them.") from None
        raise ModelError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {detail}); expected a file "
                         "written by torch.save.") from None


def state_dict_from(ckpt, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The detector's weights in a checkpoint object, keyed as mmdet's detector names them.

    Takes ``ckpt["state_dict"]`` (fpn_lab, mmdet, mmengine Runner), ``ckpt["model"]``, or ``ckpt``
    itself when it is a plain ``{name: tensor}`` dict; strips the :data:`KEY_PREFIXES` that every
    key carries (so ``module.detector.backbone...`` becomes ``backbone...``).

    Raises:
        ModelError: no dict of tensors was found (the message lists the top-level keys).
    """

    state = None
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
        else:
            if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
                state = ckpt
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"{source}: no state dict of tensors found (top level: {keys}); expected an fpn_lab or "
                         "mmdet checkpoint (a 'state_dict' entry) or a plain {name: tensor} dict.")
    state = dict(state)
    for prefix in KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def saved_class_names(ckpt) -> list[str] | None:
    """Class names recorded in a checkpoint, label order: fpn_lab's ``class_names``, mmdet 3's
    ``meta.dataset_meta.classes`` or mmdet 2's ``meta.CLASSES``; ``None`` when it has none."""
    if not isinstance(ckpt, dict):
        return None
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    for names in (ckpt.get("class_names"), dataset_meta.get("classes"), meta.get("CLASSES")):
        if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            return list(names)
    return None


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_matching` did, tensor by tensor (parameters and buffers).

    Attributes:
        source: where the weights came from (a path, for messages).
        model_tensors: number of tensors in the model's state dict.
        loaded: names loaded (name and shape matched).
        shape_mismatch: ``(name, checkpoint shape, model shape)`` for names in both with other
            shapes (e.g. the classification layers when the class count differs); these keep
            the model's initialisation.
        not_in_checkpoint: model tensors the checkpoint lacks (keep their initialisation).
        not_in_model: checkpoint tensors the model has no place for (ignored).
        reinitialised: names deliberately not loaded (class-dependent layers of a checkpoint
            trained on other classes), keeping their initialisation.
    """

    source: str
    model_tensors: int
    loaded: tuple[str, ...]
    shape_mismatch: tuple[tuple[str, tuple, tuple], ...] = ()
    not_in_checkpoint: tuple[str, ...] = ()
    not_in_model: tuple[str, ...] = ()
    reinitialised: tuple[str, ...] = ()

    @property
    def kept_initialisation(self) -> list[str]:
        """Model tensors not loaded: shape mismatches, re-initialised and missing ones, sorted."""
        return sorted([n for n, _, _ in self.shape_mismatch] + list(self.reinitialised) + list(self.not_in_checkpoint))

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} of the model's {self.model_tensors} tensors from {self.source}"]
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} with another shape kept their initialisation ("
                         + ", ".join(f"{n} {list(a)} vs {list(b)}" for n, a, b in self.shape_mismatch[:4])
                         + (", ..." if len(self.shape_mismatch) > 4 else "") + ")")
        if self.reinitialised:
            parts.append(f"{len(self.reinitialised)} class-dependent re-initialised ({', '.join(self.reinitialised[:4])}"
                         + (", ...)" if len(self.reinitialised) > 4 else ")"))
        if self.not_in_checkpoint:
            parts.append(f"{len(self.not_in_checkpoint)} missing from the checkpoint ({', '.join(self.not_in_checkpoint[:4])}"
                         + (", ...)" if len(self.not_in_checkpoint) > 4 else ")"))
        if self.not_in_model:
            parts.append(f"{len(self.not_in_model)} checkpoint tensors unused ({', '.join(self.not_in_model[:4])}"
                         + (", ...)" if len(self.not_in_model) > 4 else ")"))
        return "; ".join(parts)


def load_matching(module: torch.nn.Module, state: dict, *, source: str = "checkpoint",
                  skip: tuple[str, ...] = (), min_fraction: float = MIN_LOADED_FRACTION) -> LoadReport:
    """Load every tensor of ``state`` whose name and shape match ``module`` (names in ``skip`` excepted).

    Tensors not loaded keep the initialisation the module gave them (for heads, ``init_weights``:
    the prior-probability bias of the classification layer).

    Returns:
        :class:`LoadReport`, exact counts: every model tensor is in exactly one of ``loaded``,
        ``shape_mismatch``, ``reinitialised`` and ``not_in_checkpoint``.

    Raises:
        ModelError: fewer than ``min_fraction`` of the module's tensors would load (another
            architecture, or keys with an unknown prefix); nothing is loaded then.
    """

    own = module.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and k not in skip}
    report = LoadReport(
        source=source, model_tensors=len(own), loaded=tuple(sorted(loaded)),
        shape_mismatch=tuple((k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(own)
                             if k in state and own[k].shape != state[k].shape),
        not_in_checkpoint=tuple(k for k in sorted(own) if k not in state),
        not_in_model=tuple(k for k in sorted(state) if k not in own),
        reinitialised=tuple(k for k in sorted(own) if k in skip and k in state and own[k].shape == state[k].shape))
    if len(loaded) < min_fraction * len(own):
        raise ModelError(f"{report}. Fewer than {min_fraction:.0%} of the model's tensors match: the checkpoint was "
                         "written for another architecture (or neck) or its keys carry an unknown prefix "
                         f"(checkpoint keys look like {sorted(state)[:2]}, the model's like {sorted(own)[:2]}). "
                         "Build the model with the checkpoint's preset and neck, or use load_checkpoint() for "
                         "fpn_lab checkpoints.")
    module.load_state_dict(loaded, strict=False)
    return report
