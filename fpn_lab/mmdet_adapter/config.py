"""mmdet configs: load a preset's config from the mmdet wheel, apply fpn_lab's choices, and read its
training recipe (optimiser, parameter-wise options, clipping, warm-up, EMA) into a :class:`Recipe`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fpn_lab.errors import ModelError, did_you_mean
from fpn_lab.mmdet_adapter.necks import set_neck
from fpn_lab.core.recipe import Recipe


def configs_root() -> Path:
    """``mmdet/.mim/configs`` inside the installed mmdet wheel (found without importing mmdet)."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("mmdet is not installed; run `make setup` (scripts/setup.sh) to create the environment.")
    root = Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"
    if not root.is_dir():
        raise ModelError(f"mmdet's configs were not found at {root}; reinstall mmdet==3.3.0 from its wheel.")
    return root


#: Prefix of a preset's ``config`` that names one of fpn_lab's own configs (:data:`OWN_CONFIGS`), not mmdet's.
OWN_PREFIX = "fpn_lab:"
#: fpn_lab's own mmdet configs, for detectors whose config mmdet's wheel does not ship (EfficientDet).
OWN_CONFIGS = Path(__file__).resolve().parent / "configs"


def config_path(preset) -> Path:
    """The config file a preset names: ``mmdet/.mim/configs/<config>``, or ``OWN_CONFIGS/<rest>`` for
    ``fpn_lab:<rest>``.

    Raises:
        ModelError: the file does not exist.
    """
    own = preset.config.startswith(OWN_PREFIX)
    root = OWN_CONFIGS if own else configs_root()
    path = root / preset.config.removeprefix(OWN_PREFIX)
    if not path.is_file():
        raise ModelError(f"preset {preset.name!r} names config {preset.config!r}, which is not in {root}.")
    return path


def load_config(preset, *, num_classes: int, pretrained: str = "none", neck: str | None = None,
                neck_args: dict | None = None, cfg_options: dict | None = None):
    """The preset's mmdet config with ``num_classes`` set and pretrained ``init_cfg`` handled.

    Args:
        preset: a :class:`~fpn_lab.models.presets.Preset`.
        num_classes: classes of the dataset (no background class).
        pretrained: ``"none"`` removes every pretrained ``init_cfg``, unfreezes all backbone
            stages and keeps BatchNorm in train mode (training from scratch); ``"imagenet"``
            keeps the config's backbone ``init_cfg``; ``"coco"`` removes it (the whole detector's
            weights are loaded afterwards).
        neck, neck_args: replace or re-parameterise the neck (see :func:`.necks.set_neck`).
        cfg_options: mmdet-style overrides applied last, ``{"model.test_cfg.score_thr": 0.3, ...}``
            (dotted keys into the config; see :func:`apply_cfg_options`).

    Returns:
        ``mmengine.Config``.
    """
    from mmengine.config import Config

    path = config_path(preset)
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
        if "frozen_stages" in backbone:  # nothing frozen: -1 for ResNet and CSPDarknet (0 freezes their stem),
            backbone.frozen_stages = 0 if backbone.type == "EfficientNet" else -1  # 0 for EfficientNet
        if "norm_eval" in backbone:
            backbone.norm_eval = False
        if (backbone.get("norm_cfg") or {}).get("requires_grad") is False:  # caffe-style configs freeze BN's
            backbone.norm_cfg.requires_grad = True  # scale and shift, which from scratch stay at 1 and 0
    apply_cfg_options(cfg, cfg_options)
    return cfg


def apply_cfg_options(cfg, cfg_options: dict | None) -> None:
    """Apply ``{"dotted.key": value}`` overrides to an ``mmengine.Config`` (mmdet's ``--cfg-options``).

    Every key must already exist in the config, or be a new argument of the component it lands in:
    ``model.bbox_head.norm_cfg`` is accepted when the head's registered class (``RetinaHead``)
    takes ``norm_cfg`` in its constructor, or a constructor of a base class it passes ``**kwargs``
    to. A misspelt key is an error instead of a new, unused entry (``Config.merge_from_dict``
    would add it silently).

    Raises:
        ModelError: ``cfg_options`` is not a dict, or a key names no entry of the config and no
            constructor argument of its component; the message names the first missing part and
            the keys that exist there.
    """
    if not cfg_options:
        return
    if not isinstance(cfg_options, dict):
        raise ModelError(f"cfg_options must be a dict of dotted config keys to values, e.g. "
                         f"{{'model.test_cfg.score_thr': 0.3}}; got {type(cfg_options).__name__} {cfg_options!r}.")
    for key in cfg_options:
        node, done = cfg, []
        parts = str(key).split(".")
        for i, part in enumerate(parts):
            mapping = hasattr(node, "keys")  # mmengine's Config and ConfigDict
            if mapping and part in node:
                node, done = node[part], [*done, part]
                continue
            if mapping and i == len(parts) - 1 and part in constructor_arguments(node):
                break
            there = sorted(node.keys()) if mapping else type(node).__name__
            takes = sorted(constructor_arguments(node) - set(there)) if mapping else []
            also = f"; its class {node.get('type')!r} also takes: {takes}" if takes else ""
            raise ModelError(f"cfg_options key {key!r}: {'.'.join(done) or 'the config'} has no {part!r}"
                             f"{did_you_mean(part, [*(there if isinstance(there, list) else []), *takes])} "
                             f"(it has: {there}{also}). Keys must name existing entries of the preset's mmdet "
                             "config or constructor arguments of the component they are in.")
    cfg.merge_from_dict(dict(cfg_options))


def constructor_arguments(node) -> set[str]:
    """Keyword arguments the registered class of a config node (``{"type": "RetinaHead", ...}``) takes.

    Follows ``**kwargs`` up the class's bases (``RetinaHead`` passes them to ``AnchorHead``), so an
    argument any constructor on that chain names is included. A node without a registered ``type``
    (or whose class cannot be found in mmdet's ``MODELS`` registry) takes nothing beyond its keys.
    """
    import inspect

    kind = node.get("type") if hasattr(node, "get") else None
    if kind is None:
        return set()
    if isinstance(kind, str):
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        from fpn_lab.mmdet_adapter.components import register

        register_all_modules(init_default_scope=False)
        register()  # fpn_lab's own components (``fpn_lab.BiFPN``, ``fpn_lab.EfficientDetHead``)
        cls = MODELS.get(kind)
    else:
        cls = kind
    if not inspect.isclass(cls):
        return set()
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def set_num_classes(cfg, num_classes: int) -> None:
    """Set the class count where each supported head keeps it: ``model.bbox_head.num_classes`` (one-stage
    detectors), ``model.roi_head.bbox_head.num_classes`` (two-stage: the RPN is class-agnostic)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int (classes in the dataset); got {num_classes!r}.")
    head = cfg.model.get("bbox_head") or (cfg.model.get("roi_head") or {}).get("bbox_head")
    if head is None or "num_classes" not in head:
        raise ModelError(f"config of model type {cfg.model.type!r} has neither bbox_head.num_classes nor "
                         "roi_head.bbox_head.num_classes; fpn_lab supports detectors with one box head (VFNet, "
                         "RetinaNet, FCOS, YOLOX, Faster R-CNN).")
    head.num_classes = num_classes


def recipe_from_config(cfg) -> Recipe:
    """Read ``optim_wrapper``, ``param_scheduler``, ``custom_hooks``, ``auto_scale_lr`` and
    ``train_cfg`` of an ``mmengine.Config`` into a :class:`~fpn_lab.core.recipe.Recipe`."""
    ow = cfg.get("optim_wrapper", {})
    opt = ow.get("optimizer", {})
    pw = ow.get("paramwise_cfg") or {}
    clip = ow.get("clip_grad") or {}
    warmup = {}
    for s in cfg.get("param_scheduler") or []:
        kind = s.get("type", "").split(".")[-1]
        if kind == "LinearLR" and s.get("begin", 0) == 0:
            warmup = {"warmup": "linear", "warmup_start_factor": s.get("start_factor"),
                      ("warmup_epochs" if s.get("by_epoch", True) else "warmup_iters"): s.get("end")}
        elif kind == "ConstantLR" and s.get("begin", 0) == 0:  # FCOS: the lr times a factor, then the full lr
            warmup = {"warmup": "constant", "warmup_start_factor": s.get("factor"),
                      ("warmup_epochs" if s.get("by_epoch", True) else "warmup_iters"): s.get("end")}
        elif kind == "QuadraticWarmupLR":
            warmup = {"warmup": "quadratic",
                      ("warmup_epochs" if s.get("by_epoch", True) else "warmup_iters"): s.get("end")}
    ema = next((h.get("momentum") for h in cfg.get("custom_hooks") or [] if h.get("type") == "EMAHook"), None)
    approx = ["schedule: fastai's one-cycle (warm-up then cosine) replaces the config's schedulers"]
    if opt.get("nesterov"):
        approx.append("nesterov momentum: fastai's SGD uses classical momentum")
    if pw.get("bias_lr_mult") not in (None, 1, 1.0):
        approx.append(f"bias_lr_mult {pw['bias_lr_mult']}: not applied (fastai groups are backbone/neck/head)")
    if (pw.get("norm_decay_mult") == 0) != (pw.get("bias_decay_mult") == 0):
        approx.append("norm/bias decay: fastai switches weight decay off for norms and biases together")
    if ema is not None:
        approx.append(f"EMA (momentum {ema}): not applied")
    return Recipe(optimizer=opt.get("type", "SGD"), lr=float(opt.get("lr", 0.01)),
                  base_batch_size=int((cfg.get("auto_scale_lr") or {}).get("base_batch_size", 16)),
                  momentum=opt.get("momentum"), nesterov=bool(opt.get("nesterov", False)),
                  weight_decay=float(opt.get("weight_decay", 0.0)), norm_decay_mult=pw.get("norm_decay_mult"),
                  bias_decay_mult=pw.get("bias_decay_mult"), bias_lr_mult=pw.get("bias_lr_mult"),
                  grad_clip_max_norm=clip.get("max_norm"), ema_momentum=ema,
                  max_epochs=(cfg.get("train_cfg") or {}).get("max_epochs"), approximations=tuple(approx), **warmup)
