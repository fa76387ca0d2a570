"""The project's own error types.

Every error raised on user input is a subclass of :class:`FpnLabError` (itself a ``ValueError``),
so callers can catch one type, and the message always says what was received, what was expected
and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FpnLabError(ValueError):
    """Base class of the errors fpn_lab raises on bad input."""


class DataError(FpnLabError):
    """A dataset (annotations or images) cannot be used as given."""


class ParamsError(FpnLabError):
    """Notebook parameters (a params YAML or ``--set``) are invalid."""


class ModelError(FpnLabError):
    """A model preset, its options or a checkpoint do not fit together."""


class NeckIncompatibleError(ModelError):
    """The chosen neck cannot give the levels the preset's head uses (NAS-FPN needs P3-P7, YOLOX's
    head takes P3-P5); not raised for bad neck names or arguments."""


class OpNotAvailableError(ModelError):
    """An mmcv operator that fpn_lab's compiler-free kernels (:mod:`fpn_lab.mmdet_adapter.mmcv_ops`)
    do not provide; the message names it and how to get mmcv's compiled one."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights could not be downloaded or found locally."""


class MissingExtraError(FpnLabError):
    """An optional feature whose packages are not installed; the message names the extra of
    ``pyproject.toml`` that installs them (:mod:`fpn_lab.extras`)."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss); the message names epoch, batch and learning rate."""


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates close to ``name`` (difflib ratio >= 0.5), best first."""
    return difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ``" Did you mean 'x'?"`` suffix, or an empty string when nothing is close."""
    near = close_matches(name, candidates)
    return f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""
