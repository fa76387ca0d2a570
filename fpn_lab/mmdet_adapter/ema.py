"""Weight EMA as YOLOX trains it: mmdet's own ``ExpMomentumEMA`` around the detector."""

from __future__ import annotations

#: ``ExpMomentumEMA``'s defaults (mmdet 3.3, ``mmdet/models/layers/ema.py``) where the preset's
#: config has no ``EMAHook``.
DEFAULT_MOMENTUM = 0.0002
DEFAULT_GAMMA = 2000


def build_ema(model, *, momentum: float | None = None, gamma: float | None = None, update_buffers: bool = True):
    """mmdet's ``ExpMomentumEMA`` over ``model.detector``.

    Each update is ``ema = (1 - m) * ema + m * weights`` with
    ``m = (1 - momentum) * exp(-(1 + step) / gamma) + momentum`` (mmdet's formula): the average
    follows the weights closely early on and ever more slowly (down to ``momentum``) later.

    Args:
        model: an :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`.
        momentum: the final momentum; default: the preset's ``EMAHook`` momentum (YOLOX: 0.0001),
            else :data:`DEFAULT_MOMENTUM`.
        gamma: steps of the exponential warm-up; default :data:`DEFAULT_GAMMA` (mmdet's 2000).
        update_buffers: average BatchNorm statistics too (YOLOX's config sets it).

    Returns:
        ``mmdet.models.layers.ExpMomentumEMA``; ``ema.module`` is the averaged detector and
        ``ema.update_parameters(model.detector)`` takes one step.
    """
    from mmdet.models.layers import ExpMomentumEMA

    if momentum is None:
        momentum = model.recipe.ema_momentum or DEFAULT_MOMENTUM
    return ExpMomentumEMA(model.detector, momentum=float(momentum), gamma=gamma or DEFAULT_GAMMA,
                          update_buffers=update_buffers)
