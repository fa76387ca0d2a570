"""Weight EMA as a fastai callback: validation, predictions and checkpoints use the averaged weights."""

from __future__ import annotations

from fastai.callback.core import Callback
from fastai.torch_core import get_model  # the module inside a DistributedDataParallel wrapper (torchrun)


class WeightEMA(Callback):
    """Keep an exponential moving average of the weights (mmdet's ``ExpMomentumEMA``, as YOLOX
    trains with it: :func:`~fpn_lab.mmdet_adapter.ema.build_ema`) and use it where results come from.

    * After every optimiser step of a fit (not of ``lr_find``) the average takes one step.
    * Validation runs on the averaged weights: the model's and the average's tensors swap places
      before validation and swap back after it, so training resumes on exactly its own weights
      (no copy, no arithmetic).
    * When the fit ends the model takes the averaged weights (swapped in), so evaluation,
      predictions and the saved checkpoint use them; a further fit (``fine_tune``'s second
      phase) swaps the training weights back first and goes on exactly where training stopped.

    Args:
        momentum, gamma: see :func:`~fpn_lab.mmdet_adapter.ema.build_ema` (defaults: the preset's
            ``EMAHook`` momentum, mmdet's gamma of 2000 steps).
    """

    order = 40  # after the optimiser step (the Learner steps before after_step callbacks), before the Recorder (50)

    def __init__(self, momentum: float | None = None, gamma: float | None = None):
        self.momentum, self.gamma, self.ema = momentum, gamma, None
        self.swapped = self.holds_average = False

    def _lr_find(self) -> bool:
        return hasattr(self.learn, "lr_finder")

    def before_fit(self):
        if self._lr_find():
            return
        if self.ema is None:
            from fpn_lab.mmdet_adapter.ema import build_ema

            self.ema = build_ema(get_model(self.learn.model), momentum=self.momentum, gamma=self.gamma)
        elif self.holds_average:  # a previous fit ended on the average: train on the training weights again
            self._swap()
            self.holds_average = False

    def after_step(self):
        if self.ema is not None and not self._lr_find():
            self.ema.update_parameters(get_model(self.learn.model).detector)

    def before_validate(self):
        if self.ema is not None and not self._lr_find():
            self._swap()
            self.swapped = True

    def after_validate(self):  # fastai calls it even when a callback cancelled validation before us
        if self.swapped:
            self._swap()
            self.swapped = False

    def after_fit(self):
        if self.ema is not None and not self._lr_find() and not self.holds_average:
            self._swap()
            self.holds_average = True

    def averaged_state_dict(self) -> dict | None:
        """The model's state dict with the averaged weights in place of the training weights (what
        validation runs on), or None before the first fit."""
        if self.ema is None:
            return None
        model = get_model(self.learn.model)
        source = model.detector if self.holds_average else self.ema.module  # the average is where it stands now
        return {**model.state_dict(), **{f"detector.{k}": v for k, v in source.state_dict().items()}}

    def _pairs(self):
        own = get_model(self.learn.model).detector.state_dict(keep_vars=True)
        avg = self.ema.module.state_dict(keep_vars=True)
        return [(own[k], avg[k]) for k in own]

    def _swap(self) -> None:
        for mine, avg in self._pairs():
            mine.data, avg.data = avg.data, mine.data
