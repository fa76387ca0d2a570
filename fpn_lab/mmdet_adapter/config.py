"""mmdet configs: load a preset's config from the mmdet wheel and apply fpn_lab's choices."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fpn_lab.errors import ModelError
from fpn_lab.mmdet_adapter.necks import set_neck


def configs_root() -> Path:
    """``mmdet/.mim/configs`` inside the installed mmdet wheel (found without importing mmdet)."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("mmdet is not installed; run `make setup` (scripts/setup.sh) to create the environment.")
    root = Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"
    if not root.is_dir():
        raise ModelError(f"mmdet's configs were not found at {root}; reinstall mmdet==3.3.0 from its wheel.")
    return root


def load_config(preset, *, num_classes: int, pretrained: str = "none", neck: str | None = None,
                neck_args: dict | None = None):
    """The preset's mmdet config with ``num_classes`` set and pretrained ``init_cfg`` handled.

    Args:
        preset: a :class:`~fpn_lab.models.presets.Preset`.
        num_classes: classes of the dataset (no background class).
        pretrained: ``"none"`` removes every pretrained ``init_cfg``, unfreezes all backbone
            stages and keeps BatchNorm in train mode (training from scratch); ``"imagenet"``
            keeps the config's backbone ``init_cfg``; ``"coco"`` removes it (the whole detector's
            weights are loaded afterwards).
        neck, neck_args: replace or re-parameterise the neck (see :func:`.necks.set_neck`).

    Returns:
        ``mmengine.Config``.
    """
    from mmengine.config import Config

    path = configs_root() / preset.config
    if not path.is_file():
        raise ModelError(f"preset {preset.name!r} names mmdet config {preset.config!r}, which is not in {configs_root()}.")
    cfg = Config.fromfile(str(path))
    set_num_classes(cfg, num_classes)
    set_neck(cfg, preset, neck, **(neck_args or {}))
    # fpn_lab does its own multi-scale augmentation; mmdet's batch-level random resize (YOLOX's
    # BatchSyncRandomResize to 320..800 px every 10 iterations) would change the input size.
    cfg.model.data_preprocessor.pop("batch_augments", None)
    backbone = cfg.model.backbone
    if pretrained in ("none", "coco"):
        backbone.pop("init_cfg", None)
    if pretrained == "none":
        if "frozen_stages" in backbone:
            backbone.frozen_stages = -1
        if "norm_eval" in backbone:
            backbone.norm_eval = False
    return cfg


def set_num_classes(cfg, num_classes: int) -> None:
    """Set the class count where each supported head keeps it (``model.bbox_head.num_classes``)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int (classes in the dataset); got {num_classes!r}.")
    head = cfg.model.get("bbox_head")
    if head is None or "num_classes" not in head:
        raise ModelError(f"config of model type {cfg.model.type!r} has no bbox_head.num_classes; fpn_lab supports "
                         "one-stage detectors (VFNet, RetinaNet, YOLOX).")
    head.num_classes = num_classes
