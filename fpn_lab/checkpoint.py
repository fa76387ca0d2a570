"""Checkpoints: weights plus everything needed to rebuild the model, as plain types.

A checkpoint is a dict loadable with ``torch.load(path)`` under torch's default
``weights_only=True``: ``state_dict`` (tensors, keys ``detector.<mmdet name>``), ``preset``
(name), ``class_names`` (list, label order), ``image_size`` (int, the letterbox side in pixels),
``pad_position`` and ``pad_value`` (the letterbox's placement and RGB fill), ``neck`` and
``neck_args`` (the neck choice), ``cfg_options`` (the overrides of the preset's config), ``pretrained`` (the initialisation the model was built with),
``config`` (the resolved mmdet config as nested dicts/lists) and ``fpn_lab_version``.

To start a new training from one, use ``build_model(..., weights=path)`` (it also reads mmdet and
mmengine checkpoints); to get the trained model back as it was, :func:`load_checkpoint`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from fpn_lab import __version__
from fpn_lab.core.class_map import ClassMap
from fpn_lab.errors import ModelError

log = logging.getLogger("fpn_lab.checkpoint")
#: Keys every fpn_lab checkpoint has.
REQUIRED_KEYS = ("state_dict", "preset", "class_names", "image_size", "config")


def _plain(obj):
    """Convert a config tree to JSON types (tuples to lists; anything else to its repr)."""
    return json.loads(json.dumps(obj, default=repr))


def save_checkpoint(path: str | Path, model, class_map: ClassMap, *, image_size: int, pad_position: str = "top_left") -> Path:
    """Write ``model`` and its metadata to ``path`` atomically (a temp file, then rename).

    Under torchrun only rank 0 writes and every process waits until the file is there (a
    ``DistributedDataParallel`` wrapper is unwrapped: keys never carry its ``module.`` prefix).

    Raises:
        ModelError: the model predicts another number of classes than ``class_map`` holds, or
            ``image_size`` / ``pad_position`` are not the letterbox the model was trained with
            (``model.image_size``, ``model.pad_position``, set by ``make_learner``).
    """
    from torch.nn.parallel import DistributedDataParallel

    from fpn_lab import distributed
    from fpn_lab.models.build import check_num_classes

    if isinstance(model, DistributedDataParallel):
        model = model.module
    check_num_classes(model, class_map, "save_checkpoint")
    trained = (getattr(model, "image_size", None), getattr(model, "pad_position", None))
    if trained[0] is not None and (trained[0], trained[1] or pad_position) != (image_size, pad_position):
        raise ModelError(f"save_checkpoint: the model was trained on images letterboxed to {trained[0]} px "
                         f"({trained[1]}), but image_size={image_size}, pad_position={pad_position!r} were given: "
                         "the checkpoint would tell every later prediction to feed it otherwise. Pass "
                         f"image_size={trained[0]}, pad_position={trained[1]!r}.")
    path = Path(path)
    if distributed.is_main():
        _write_checkpoint(path, model, class_map, image_size, pad_position)
    distributed.barrier()
    return path


def _write_checkpoint(path: Path, model, class_map: ClassMap, image_size: int, pad_position: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "preset": model.preset.name, "class_names": list(class_map.names),
            "category_ids": [int(c) for c in class_map.category_ids], "image_size": int(image_size),
            "pad_position": pad_position, "pad_value": [float(v) for v in model.pad_value],
            **getattr(model, "neck_choice", {}), "cfg_options": _plain(getattr(model, "cfg_options", None) or {}),
            "pretrained": getattr(model, "pretrained", None),
            "config": _plain(model.cfg.to_dict()), "fpn_lab_version": __version__}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, *, class_map: ClassMap | Sequence[str] | None = None):
    """Rebuild the model saved by :func:`save_checkpoint`, exactly as it was saved.

    The detector is built from the checkpoint's own resolved mmdet config (so a later change of the
    installed mmdet config cannot change the model; a warning names the differing entries) and
    every tensor must load.

    Args:
        path: checkpoint file.
        class_map: the class map the caller expects; other names, or the same names in another
            order, are an error naming both lists (fine-tuning on other classes is
            ``build_model(..., weights=path, class_names=...)``).

    Returns:
        ``(model, info)``: the model in eval mode (``model.pad_value`` the fill it was trained
        with), and the checkpoint dict without ``state_dict``: ``preset``, ``class_names``,
        ``category_ids`` and ``class_map`` (a :class:`ClassMap` with the source's category ids,
        as trained; ``label + 1`` for checkpoints that did not store them), ``image_size``,
        ``pad_position``, ``pad_value`` (the letterbox to predict with), ``neck``,
        ``neck_args``, ``config``...

    Raises:
        ModelError: not an fpn_lab checkpoint, another class map, or weights that do not fit
            the saved config.
    """
    from fpn_lab.mmdet_adapter.wrapper import build_detector_from_config
    from fpn_lab.models.registry import get_preset
    from fpn_lab.models.weights import read_checkpoint

    ckpt = read_checkpoint(path)
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ModelError(f"{path} is not an fpn_lab checkpoint (missing {missing}; expected keys {list(REQUIRED_KEYS)}). "
                         "To start from mmdet or other weights use build_model(..., weights=path).")
    saved = list(ckpt["class_names"])
    if class_map is not None:
        expected = list(class_map.names if isinstance(class_map, ClassMap) else class_map)
        if expected != saved:
            order = " (the same names in another order)" if sorted(expected) == sorted(saved) else ""
            raise ModelError(f"checkpoint {path} was trained with classes {saved} but {expected} were expected{order}; "
                             "use the checkpoint's class map (order matters), or fine-tune on the new classes with "
                             "build_model(..., weights=path, class_names=...).")
        saved_ids = ckpt.get("category_ids")
        if isinstance(class_map, ClassMap) and saved_ids is not None and list(class_map.category_ids) != list(saved_ids):
            raise ModelError(f"checkpoint {path} was trained with category ids {list(saved_ids)} for {saved} but the "
                             f"class map given has {list(class_map.category_ids)}; results would name other "
                             "categories. Use info['class_map'] of the checkpoint, or a class map with its ids.")
    preset = get_preset(ckpt["preset"])
    _warn_if_config_changed(ckpt, preset, path)
    model = build_detector_from_config(ckpt["config"], preset)
    model.neck_choice = {"neck": ckpt.get("neck"), "neck_args": dict(ckpt.get("neck_args") or {})}
    model.cfg_options = dict(ckpt.get("cfg_options") or {})
    model.pretrained = ckpt.get("pretrained")
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:  # missing, unexpected or differently shaped tensors
        raise ModelError(f"{path}: its weights do not fit its own config; the file is damaged or was edited "
                         f"({' '.join(str(e).split())[:300]}).") from None
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info.setdefault("pad_value", list(preset.pad_value))
    model.pad_value = info["pad_value"]
    info["class_map"] = ClassMap(saved, info.get("category_ids"))  # ids: the source's, as trained
    info.setdefault("pad_position", "top_left")
    model.image_size, model.pad_position, model.class_names = int(info["image_size"]), info["pad_position"], saved
    model.category_ids = [int(c) for c in info["class_map"].category_ids]
    return model, info


def _warn_if_config_changed(ckpt: dict, preset, path) -> None:
    """Warn when the installed mmdet config for the checkpoint's preset differs from the saved one."""
    from fpn_lab.mmdet_adapter.config import load_config

    try:
        current = load_config(preset, num_classes=len(ckpt["class_names"]), pretrained=ckpt.get("pretrained") or "none",
                              neck=ckpt.get("neck"), neck_args=ckpt.get("neck_args"),
                              cfg_options=ckpt.get("cfg_options") or None)
    except ModelError as e:
        log.warning("%s: the installed mmdet config for %s cannot be built (%s); using the saved config.",
                    path, preset.name, e)
        return
    diff = _diff(_plain(current.to_dict()).get("model"), ckpt["config"].get("model"), "model")
    if diff:
        log.warning("%s: the installed mmdet config for %s differs from the one saved with the checkpoint in %d "
                    "entries (%s); the model is rebuilt from the saved config.", path, preset.name, len(diff),
                    ", ".join(diff[:5]))


def _diff(a, b, where: str) -> list[str]:
    """Dotted paths at which two plain config trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


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
