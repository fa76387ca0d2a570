"""``build_model``: a preset, a class count and a pretrained choice to a ready ``MMDetModel``."""

from __future__ import annotations

import logging
from pathlib import Path

from fpn_lab.errors import ModelError, WeightsUnavailableError
from fpn_lab.models.registry import get_preset
from fpn_lab.models.weights import (
    download_weights, load_matching, read_checkpoint, saved_class_names, state_dict_from,
)

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
                neck: str | None = None, neck_args: dict | None = None, class_names=None,
                cfg_options: dict | None = None, allow_partial: bool = False):
    """Build a detector from the catalogue.

    Args:
        selection: IceVision index, preset name or alias (see :func:`~fpn_lab.models.registry.get_preset`).
        num_classes: classes in the data (no background).
        pretrained: ``False``/``"none"`` trains from scratch (no pretrained init, all stages
            trainable, BatchNorm in train mode; no network access); ``"imagenet"`` initialises the
            backbone from the config's ImageNet checkpoint; ``True``/``"coco"`` loads mmdet's COCO
            weights for the preset (downloaded into the weights cache), re-initialising the
            class-dependent layers when ``num_classes`` differs from COCO's 80.
        weights: a local checkpoint to start from instead of downloading: an fpn_lab checkpoint
            (``runs/<run>/model.pth``), an mmdet or mmengine ``Runner`` checkpoint (``state_dict``,
            ``meta``, ``message_hub``...) or a plain state dict, keys with or without ``module.`` /
            ``detector.`` prefixes (see :func:`~fpn_lab.models.weights.load_matching`).
        neck: ``"fpn"``, ``"pafpn"``, ``"nasfpn"``, ``"bifpn"`` or ``"channel_mapper"`` to replace
            the preset's neck; ``neck_args`` overrides its arguments
            (:data:`~fpn_lab.mmdet_adapter.necks.NECK_ARGS`). Conflicts with the head are errors.
        class_names: the dataset's class names in label order. When the checkpoint records its
            own (fpn_lab's ``class_names``, mmdet's ``meta.dataset_meta.classes`` or
            ``meta.CLASSES``): the same names in another order are an error (the head's rows would
            predict swapped labels); other classes re-initialise the class-dependent layers (a
            fine-tune), with a warning naming them. Without ``class_names``, the checkpoint's
            names are kept as ``model.class_names``, and training, evaluating or saving with a
            class map that orders them otherwise is an error
            (:func:`check_num_classes`).
        cfg_options: overrides of the preset's mmdet config, ``{"model.test_cfg.score_thr": 0.3}``
            (mmdet's ``--cfg-options``; IceVision's ``model(..., cfg_options=)``), applied last; a key
            that names no config entry is a ``ModelError``
            (:func:`~fpn_lab.mmdet_adapter.config.apply_cfg_options`).
        allow_partial: accept weights that leave tensors other than the class-dependent layers
            at their initialisation (another neck or head, a changed config): a fine-tune from a
            partial start, reported in ``model.weights_report``. Default: such a load is an error.

    Returns:
        :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`; ``model.weights_report`` is the
        :class:`~fpn_lab.models.weights.LoadReport` (``None`` without weights) and
        ``model.skipped_weights`` lists the model tensors that kept their initialisation.

    Raises:
        ModelError: a tensor other than the class-dependent layers does not load (unless
            ``allow_partial``; fewer than half loading is an error always), the checkpoint's
            recorded neck (fpn_lab checkpoints) is not the one asked for, or its classes are the
            dataset's in another order.
        WeightsUnavailableError: the weights cannot be downloaded or the file does not exist, or
            ``pretrained`` asks for COCO weights of a preset that has none (EfficientDet).
    """
    from fpn_lab.mmdet_adapter.wrapper import build_detector, class_dependent_keys

    preset = get_preset(selection)
    mode = "coco" if weights is not None else normalize_pretrained(pretrained)
    model = build_detector(preset, num_classes=num_classes, pretrained=mode, neck=neck or None, neck_args=neck_args,
                           cfg_options=cfg_options)
    model.skipped_weights, model.weights_report = [], None
    if mode == "coco":
        if weights is None and not preset.weights_url:
            raise WeightsUnavailableError(
                f"{preset.name} has no published COCO checkpoint that mmdet loads, so pretrained=True cannot fetch one. "
                "Train from scratch (pretrained=False), start from the ImageNet backbone (pretrained='imagenet'), "
                "or pass weights='path/to/checkpoint.pth'.")
        path = Path(weights) if weights is not None else download_weights(preset.weights_url)
        ckpt = read_checkpoint(path)
        _check_same_neck(ckpt, path, neck, neck_args)
        skip = ()
        saved = saved_class_names(ckpt)
        if saved is not None and class_names is not None and list(saved) != list(class_names):
            if sorted(saved) == sorted(class_names):
                raise ModelError(f"checkpoint {path} was trained with classes {list(saved)}, the data has the same "
                                 f"classes in another order {list(class_names)}: its head would predict swapped "
                                 "labels. Parse the data with class_map=ClassMap(<the checkpoint's order>).")
            skip = tuple(class_dependent_keys(model))
            log.warning("checkpoint %s was trained with classes %s, the data has %s: re-initialising the "
                        "class-dependent layers %s", path.name, list(saved), list(class_names), ", ".join(skip))
        model.weights_report = load_matching(model.detector, state_dict_from(ckpt, str(path)), source=str(path),
                                             skip=skip)
        model.skipped_weights = model.weights_report.kept_initialisation
        class_layers = set(class_dependent_keys(model))
        partial = [k for k in model.skipped_weights  # BatchNorm's step counter does not change a prediction
                   if k not in class_layers and not k.endswith("num_batches_tracked")]
        if partial and not allow_partial:
            raise ModelError(f"{path}: {len(partial)} of the model's {model.weights_report.model_tensors} tensors beyond "
                             f"the class-dependent layers would keep their initialisation ({', '.join(partial[:4])}"
                             f"{', ...' if len(partial) > 4 else ''}): the checkpoint was written for another "
                             f"architecture, neck or config ({model.weights_report}). Build the model as the checkpoint "
                             "was built, or pass allow_partial=True to fine-tune from this partial start.")
        log.log(logging.WARNING if model.skipped_weights else logging.INFO, "%s: %s", preset.name, model.weights_report)
        if not skip and saved is not None and len(saved) == num_classes:
            model.class_names = list(saved)  # the head predicts these, in this order
    return model


def _check_same_neck(ckpt, path, neck, neck_args) -> None:
    """An fpn_lab checkpoint records its neck: asking for another one is an error, not a half load."""
    if not isinstance(ckpt, dict) or "neck" not in ckpt or "preset" not in ckpt:
        return  # mmdet / plain checkpoints say nothing about fpn_lab's neck choice
    saved = (ckpt.get("neck") or None, dict(ckpt.get("neck_args") or {}))
    asked = (neck or None, dict(neck_args or {}))
    if saved != asked:
        def show(n, a):
            return (n or "the preset's own") + (f" {a}" if a else "")

        raise ModelError(f"{path} was trained with neck {show(*saved)}, but neck {show(*asked)} was asked for: its neck "
                         f"weights would not load. Build with neck={saved[0] or ''!r}"
                         f"{f', neck_args={saved[1]}' if saved[1] else ''} (the notebook's neck / neck_args "
                         "parameters), or train the other neck from scratch.")


def count_parameters(model) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def check_num_classes(model, class_names, where: str) -> None:
    """Refuse a model whose head predicts another number of classes than the class map holds.

    Args:
        model: an :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`.
        class_names: the dataset's :class:`~fpn_lab.core.class_map.ClassMap` or names in label order.
        where: the calling function, for the message.

    Raises:
        ModelError: naming both counts and the classes (labels beyond the map would otherwise be
            dropped in evaluation and fail in drawings); or the model remembers the classes of the
            checkpoint it was built from (``model.class_names``) and the class map holds the same
            names in another order.
    """
    names = list(getattr(class_names, "names", class_names))
    trained = getattr(model, "class_names", None)
    if trained is not None and list(trained) != names and sorted(trained) == sorted(names):
        raise ModelError(f"{where}: the model's head predicts classes {list(trained)} (from its checkpoint) but the class "
                         f"map orders them {names}: its labels would be swapped. Parse the data with "
                         f"class_map=ClassMap({list(trained)}).")
    ids, given = getattr(model, "category_ids", None), getattr(class_names, "category_ids", None)
    if ids is not None and given is not None and trained is not None and list(trained) == names \
            and [int(c) for c in given] != list(ids):
        raise ModelError(f"{where}: the model was trained with category ids {list(ids)} for {names}, but the class map "
                         f"gives {[int(c) for c in given]}: its results would name other categories than the data's. "
                         "Use the class map the model was trained with (a checkpoint's info['class_map']).")
    if model.num_classes != len(names):
        raise ModelError(f"{where}: the model predicts num_classes={model.num_classes} but the dataset's class map has "
                         f"{len(names)} classes ({', '.join(map(str, names))}); build the model with "
                         f"num_classes=len(class_map) = {len(names)}.")


def place_model(model, device: str = "cpu", *, channels_last: bool = True):
    """Move ``model`` to ``device`` with its 4-D weights in channels-last (NHWC) or the default
    (NCHW) memory layout; returns the model (moved in place, as ``nn.Module.to``).

    With ``channels_last`` the model's preprocessing also hands the network NHWC inputs
    (``MMDetModel.channels_last``), so the backbone, neck and head run in NHWC: on this project's
    2-core CPU a YOLOX-tiny training step (batch 8, 320 px) took 12 % less time than NCHW (8 % with
    the weights alone; ``bench/step_speed.py``, interleaved, ``bench/RESULTS.md`` section 8).
    Numbers differ from NCHW only by float rounding; a model and its reloaded copy compare exactly
    only when placed alike. Where mmcv's compiled extension is in use, its deformable convolutions
    (VFNet's head) stay NCHW, as its CPU kernels require
    (:func:`~fpn_lab.mmdet_adapter.wrapper.keep_mmcv_ops_contiguous`).
    """
    import torch

    from fpn_lab.mmdet_adapter.wrapper import keep_mmcv_ops_contiguous

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    model.channels_last = bool(channels_last)
    keep_mmcv_ops_contiguous(model)  # compiled mmcv: its deformable convolutions take NCHW only
    return model


def check_model_params(params: dict, resolve=Path) -> None:
    """A notebook run's model parameters: ``selection`` (a registered preset, name or IceVision index:
    :func:`~fpn_lab.models.registry.get_preset`) and ``weights`` (an existing file, looked up through
    ``resolve``: the runner's ``project_path``); absent or empty keys are not checked.

    Raises:
        ParamsError: an unknown selection (the registry's message: valid indices, close names) or a
            weights path that is not a file.
    """
    from fpn_lab.errors import FpnLabError, ParamsError

    if "selection" in params:
        try:
            get_preset(params["selection"])
        except FpnLabError as e:
            raise ParamsError(str(e)) from None
    weights = params.get("weights")
    if weights and not resolve(weights).is_file():
        raise ParamsError(f"weights: {weights!r} is not a file (looked in {resolve(weights)}).")
