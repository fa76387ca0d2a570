"""fastai callbacks: the mmdet glue (one small callback), the image-weighted validation loss and the non-finite-loss guard."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.torch_core import get_model  # the module inside a DistributedDataParallel wrapper (torchrun)
from fastai.learner import AvgLoss

from fpn_lab.errors import TrainingError


class ImageAvgLoss(AvgLoss):
    """fastai's validation-loss average, weighted by the number of images in each batch.

    fastai's ``AvgLoss`` weighs each batch by ``find_bs(yb)``, which for detection targets (a
    list of dicts) is the number of boxes in the batch's *first* image: a batch whose first
    image is a negative would count zero times. Here the weight is ``len(xb[0])`` (images).
    """

    def accumulate(self, learn):
        bs = len(learn.xb[0])
        self.total += learn.to_detach(learn.loss.mean()) * bs
        self.count += bs


class MMDetCallback(Callback):
    """Feeds targets to :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`, which needs them in its forward,
    and keeps the mean of each of mmdet's loss terms over every training epoch.

    fastai calls ``model(*xb)`` and ``loss_func(pred, *yb)``. mmdet detectors compute their loss
    inside the forward, so before each batch the targets are appended to ``xb``; ``yb`` keeps them
    too, for the loss function (which reads ``pred["loss"]``) and the COCO metric.

    ``learn.loss_terms`` holds, per training epoch of the current fit (as fastai's recorder keeps
    its values), ``{name: mean}`` of the terms mmdet reports (``loss_cls``, ``loss_bbox``...;
    Faster R-CNN's ``loss_rpn_cls``, ``loss_rpn_bbox`` and ``acc``, the RoI head's accuracy in
    percent) over the epoch's training batches, weighted by images. ``lr_find`` keeps none.
    """

    order = -10  # before everything that reads xb

    def before_fit(self):
        if not hasattr(self.learn, "lr_finder"):
            self.learn.loss_terms = []

    def before_epoch(self):
        self._sums, self._images = {}, 0

    def before_batch(self):
        self.learn.xb = (self.xb[0], self.yb[0])

    def after_loss(self):
        terms = {k: float(v) for k, v in self.pred.items() if k.startswith("loss_") or k == "acc"}
        # per-component losses of the last batch, for logging (e.g. loss_cls, loss_bbox)
        self.learn.loss_parts = {k: v for k, v in terms.items() if k != "acc"}
        if self.training and not hasattr(self.learn, "lr_finder"):
            n = len(self.xb[0])
            for k, v in terms.items():
                self._sums[k] = self._sums.get(k, 0.0) + v * n
            self._images += n

    def after_train(self):
        if not hasattr(self.learn, "lr_finder") and self._images:
            self.learn.loss_terms.append({k: v / self._images for k, v in self._sums.items()})


class NonFiniteLossGuard(Callback):
    """Stop on a NaN or infinite loss with a :class:`~fpn_lab.errors.TrainingError` that names the
    phase (``training``, ``validation`` or ``lr_find``), the epoch (``3/7``, as the per-epoch lines
    count, and its row in fastai's progress table, which counts from 0), the batch, the learning
    rate and the loss terms that went non-finite (or the weights / features that did, when mmdet
    could not compute a loss at all).

    fastai's own ``TerminateOnNaNCallback`` cancels the fit quietly, so a headless run would exit
    0; this raises instead. In ``lr_find`` a non-finite loss is how the search normally ends (at
    its highest learning rates), so it is an error there only within the first
    :data:`LR_FIND_MIN_POINTS` iterations, before the finder could suggest anything. After every
    epoch whose losses were all finite, the model weights are saved to ``checkpoint`` (when given),
    so the last good state survives the failure; with weight EMA
    (:class:`~fpn_lab.learner.ema.WeightEMA`) the averaged weights, which validation ran on.
    """

    order = 5
    #: lr_find iterations needed before a non-finite loss counts as the search's normal end
    #: (fastai's ``valley`` suggestion needs at least 10 points; see ``find_lr``).
    LR_FIND_MIN_POINTS = 10

    def __init__(self, checkpoint: str | Path | None = None):
        self.checkpoint = Path(checkpoint) if checkpoint else None

    def after_loss(self):
        loss = float(self.learn.loss.detach())
        if math.isfinite(loss):
            return
        in_lr_find = hasattr(self.learn, "lr_finder")
        if in_lr_find and self.learn.train_iter >= self.LR_FIND_MIN_POINTS:
            return  # the LR finder's normal stop at a diverging learning rate
        phase = "lr_find" if in_lr_find else ("training" if self.training else "validation")
        lr = self.opt.hypers[-1].get("lr", float("nan")) if self.opt is not None else float("nan")
        pred = self.learn.pred if isinstance(self.learn.pred, dict) else {}
        terms = {k: float(v) for k, v in pred.items() if k.startswith("loss_") and not math.isfinite(float(v))}
        cause = pred.get("nonfinite") or (
            "non-finite terms: " + ", ".join(f"{k}={v}" for k, v in terms.items()) if terms else "")
        n_iter = getattr(self.learn, "n_iter", None)
        saved = f"; the last good weights are in {self.checkpoint}" if self.checkpoint and self.checkpoint.exists() else ""
        raise TrainingError(f"non-finite {phase} loss {loss} at epoch {self.epoch + 1}/{self.n_epoch} (row {self.epoch} of "
                            f"the progress table, which counts from 0), batch {self.iter + 1}"
                            f"{f'/{n_iter}' if n_iter else ''} (learning rate {lr:.3g})"
                            f"{'; ' + cause if cause else ''}{saved}. Lower the learning rate or check the data.")

    def after_epoch(self):
        # lr_find's epochs end with deliberately diverged weights: never keep those as "good".
        if self.checkpoint is None or hasattr(self.learn, "lr_finder"):
            return
        ema = getattr(self.learn, "weight_ema", None)  # with weight EMA: the averaged weights, as validated
        state = (ema.averaged_state_dict() if ema is not None else None) or get_model(self.learn.model).state_dict()
        if all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(self.checkpoint)
