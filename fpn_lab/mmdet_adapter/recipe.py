"""Translate an mmdet config's optimiser, parameter-wise options, clipping, warm-up and EMA."""

from __future__ import annotations

from fpn_lab.models.recipe import Recipe


def recipe_from_config(cfg) -> Recipe:
    """Read ``optim_wrapper``, ``param_scheduler``, ``custom_hooks``, ``auto_scale_lr`` and
    ``train_cfg`` of an ``mmengine.Config`` into a :class:`~fpn_lab.models.recipe.Recipe`."""
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
