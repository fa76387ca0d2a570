"""``build_model``: a preset, a class count and a pretrained choice to a ready ``MMDetModel``."""

from __future__ import annotations

import logging
from pathlib import Path

from fpn_lab.errors import ModelError
from fpn_lab.models.registry import get_preset
from fpn_lab.models.weights import download_weights, load_matching, load_state_dict

log = logging.getLogger("fpn_lab.models")
PRETRAINED = ("none", "imagenet", "coco")


def normalize_pretrained(pretrained) -> str:
    """``False``/``None``/``"none"`` -> ``"none"``; ``True``/``"coco"`` -> ``"coco"``; ``"imagenet"``."""
    if pretrained in (False, None, "none", "false", "False"):
        return "none"
    if pretrained in (True, "coco", "true", "True"):
        return "coco"
    if pretrained == "imagenet":
        return "imagenet"
    raise ModelError(f"pretrained must be one of {PRETRAINED} (or True/False); got {pretrained!r}.")


def build_model(selection, *, num_classes: int, pretrained=False, weights: str | Path | None = None,
                neck: str | None = None, neck_args: dict | None = None):
    """Build a detector from the catalogue.

    Args:
        selection: IceVision index, preset name or alias (see :func:`~fpn_lab.models.registry.get_preset`).
        num_classes: classes in the data (no background).
        pretrained: ``False``/``"none"`` trains from scratch (no pretrained init, all stages
            trainable, BatchNorm in train mode; no network access); ``"imagenet"`` initialises the
            backbone from the config's ImageNet checkpoint; ``True``/``"coco"`` loads mmdet's COCO
            weights for the preset (downloaded into the weights cache), re-initialising the
            class-dependent layers when ``num_classes`` differs from COCO's 80.
        weights: a local checkpoint to load instead of downloading (implies COCO-style loading).
        neck: ``"fpn"``, ``"pafpn"`` or ``"nasfpn"`` to replace the preset's neck; ``neck_args``
            overrides FPN arguments (``out_channels``, ``start_level``, ``add_extra_convs``,
            ``num_outs``, ``relu_before_extra_convs``). Conflicts with the head are errors.

    Returns:
        :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`; ``model.skipped_weights`` lists the
        checkpoint tensors that were not loaded.
    """
    from fpn_lab.mmdet_adapter.wrapper import build_detector

    preset = get_preset(selection)
    mode = "coco" if weights is not None else normalize_pretrained(pretrained)
    model = build_detector(preset, num_classes=num_classes, pretrained=mode, neck=neck or None, neck_args=neck_args)
    model.skipped_weights = []
    if mode == "coco":
        path = Path(weights) if weights is not None else download_weights(preset.weights_url)
        model.skipped_weights = load_matching(model.detector, load_state_dict(path))
        if model.skipped_weights:
            log.warning("%s: %d tensors not loaded from %s (kept their initialisation): %s", preset.name,
                        len(model.skipped_weights), path.name, ", ".join(model.skipped_weights[:8]))
    return model


def count_parameters(model) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
