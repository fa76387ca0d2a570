"""Checkpoints: weights plus everything needed to rebuild the model, as plain types.

A checkpoint is a dict loadable with ``torch.load(path)`` under torch's default
``weights_only=True``: ``state_dict`` (tensors), ``preset`` (name), ``class_names`` (list),
``image_size`` (int), ``pad_position``, ``neck`` and ``neck_args`` (the neck choice), ``config`` (the resolved mmdet config as nested
dicts/lists) and ``fpn_lab_version``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fpn_lab import __version__
from fpn_lab.core.class_map import ClassMap
from fpn_lab.errors import ModelError


def _plain(obj):
    """Convert a config tree to JSON types (tuples to lists; anything else to its repr)."""
    return json.loads(json.dumps(obj, default=repr))


def save_checkpoint(path: str | Path, model, class_map: ClassMap, *, image_size: int, pad_position: str = "top_left") -> Path:
    """Write ``model`` and its metadata to ``path`` atomically (a temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "preset": model.preset.name, "class_names": list(class_map.names), "image_size": int(image_size),
            "pad_position": pad_position, **getattr(model, "neck_choice", {}), "config": _plain(model.cfg.to_dict()), "fpn_lab_version": __version__}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, *, class_map: ClassMap | Sequence[str] | None = None,
                    remap: Mapping[str, str] | None = None):
    """Rebuild the model saved by :func:`save_checkpoint`.

    Args:
        path: checkpoint file.
        class_map: the class map the caller expects; a different one is an error naming both,
            unless ``remap`` says how the checkpoint's names map to the expected ones.
        remap: ``{checkpoint name: expected name}``; the class-dependent outputs are permuted.

    Returns:
        ``(model, info)`` where ``info`` is the checkpoint dict without ``state_dict``.
    """
    from fpn_lab.models.build import build_model

    ckpt = torch.load(Path(path), map_location="cpu")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "preset" not in ckpt:
        raise ModelError(f"{path} is not an fpn_lab checkpoint (expected keys state_dict, preset, class_names).")
    saved = ckpt["class_names"]
    if class_map is not None:
        expected = list(class_map.names if isinstance(class_map, ClassMap) else class_map)
        if remap is not None:
            raise ModelError("remapping classes on load is not supported yet; retrain or fix the class map.")
        if expected != saved:
            raise ModelError(f"checkpoint {path} was trained with classes {saved} but {expected} were expected; "
                             "use the same class map (order matters) or retrain.")
    model = build_model(ckpt["preset"], num_classes=len(saved), pretrained=False, neck=ckpt.get("neck"),
                        neck_args=ckpt.get("neck_args"))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, info


def check_reload(model, reloaded, images, *, image_size: int, atol: float = 1e-4) -> int:
    """Check that ``reloaded`` predicts the same boxes as ``model`` on ``images``; returns the box count.

    Both predict with the score threshold at 0, so even a barely trained model yields boxes to
    compare (up to the head's ``max_per_img`` per image).

    Raises:
        ModelError: no box at all, or boxes/scores/labels differ beyond ``atol``.
    """
    import numpy as np

    from fpn_lab.inference import predict_images
    from fpn_lab.mmdet_adapter.wrapper import score_threshold

    with score_threshold(model, 0.0), score_threshold(reloaded, 0.0):
        a = predict_images(model, images, image_size=image_size)
        b = predict_images(reloaded, images, image_size=image_size)
    total = sum(len(p["boxes"]) for p in a)
    if total == 0:
        raise ModelError("the model predicts no box at all, so the reload cannot be checked.")
    for k, (p, q) in enumerate(zip(a, b)):
        same = (p["labels"].shape == q["labels"].shape and np.array_equal(p["labels"], q["labels"])
                and np.allclose(p["boxes"], q["boxes"], atol=atol) and np.allclose(p["scores"], q["scores"], atol=atol))
        if not same:
            raise ModelError(f"image {k}: the reloaded model predicts {len(q['boxes'])} boxes, the trained one "
                             f"{len(p['boxes'])}, or they differ beyond {atol}; the checkpoint is not faithful.")
    return total
