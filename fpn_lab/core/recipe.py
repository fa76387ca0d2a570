"""Training recipes: what an mmdet config says about optimisation, as frozen data.

:func:`fpn_lab.mmdet_adapter.config.recipe_from_config` reads a config into a :class:`Recipe`;
:func:`fpn_lab.learner.learner.make_learner` turns it into fastai settings (``opt="recipe"``).
What fastai cannot express exactly is listed in :attr:`Recipe.approximations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    """The optimisation part of an mmdet config.

    Attributes:
        optimizer: mmdet optimizer type (``"SGD"``, ``"AdamW"``).
        lr: base learning rate for ``base_batch_size`` images per step (``auto_scale_lr``).
        momentum, nesterov, weight_decay: optimizer arguments (weight decay is L2 for SGD).
        norm_decay_mult, bias_decay_mult, bias_lr_mult: ``paramwise_cfg`` (None = not set = 1).
        grad_clip_max_norm: ``clip_grad.max_norm`` or None.
        warmup: ``"linear"`` (LinearLR from ``warmup_start_factor``), ``"constant"`` (ConstantLR: the lr
            times ``warmup_start_factor``, then the full lr; FCOS) or ``"quadratic"`` (YOLOX) or None;
            ``warmup_iters`` / ``warmup_epochs``: its length as the config states it.
        ema_momentum: EMAHook momentum (mmengine's ``ExpMomentumEMA``), or None.
        max_epochs: the config's training length.
    """

    optimizer: str
    lr: float
    base_batch_size: int
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float = 0.0
    norm_decay_mult: float | None = None
    bias_decay_mult: float | None = None
    bias_lr_mult: float | None = None
    grad_clip_max_norm: float | None = None
    warmup: str | None = None
    warmup_iters: int | None = None
    warmup_epochs: int | None = None
    warmup_start_factor: float | None = None
    ema_momentum: float | None = None
    max_epochs: int | None = None
    approximations: tuple[str, ...] = field(default=())

    def scaled_lr(self, batch_size: int) -> float:
        """Linear scaling rule (Goyal et al. 2017), as mmdet's ``auto_scale_lr``: ``lr * batch / base``."""
        return self.lr * batch_size / self.base_batch_size
