"""Pretrained weights: download with a hash check, local files, and safe loading."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from fpn_lab.errors import WeightsUnavailableError

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


def load_state_dict(path: str | Path) -> dict:
    """Load a checkpoint's weights with ``torch.load(weights_only=True)`` plus an allow-list.

    Accepts a bare state dict or a dict with ``state_dict`` (mmdet) or ``model``. Raises
    :class:`WeightsUnavailableError` for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}.")
    from fpn_lab.mmdet_adapter.safe_load import allowed_globals

    with torch.serialization.safe_globals(allowed_globals()):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
    return ckpt


def load_matching(module: torch.nn.Module, state: dict) -> list[str]:
    """Load every tensor of ``state`` whose name and shape match ``module``; return the skipped names.

    Layers skipped for a shape mismatch (the class-dependent convolutions when the class count
    differs) keep the initialisation the head gave them (``init_weights``: prior-probability bias).
    """
    own = module.state_dict()
    ok = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(ok)) + sorted(set(own) - set(state))
    module.load_state_dict(ok, strict=False)
    return skipped
