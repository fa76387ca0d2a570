"""fastai callbacks: the mmdet glue (one small callback) and the non-finite-loss guard."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from fastai.callback.core import Callback

from fpn_lab.errors import TrainingError


class MMDetCallback(Callback):
    """Feeds targets to :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`, which needs them in its forward.

    fastai calls ``model(*xb)`` and ``loss_func(pred, *yb)``. mmdet detectors compute their loss
    inside the forward, so before each batch the targets are appended to ``xb``; ``yb`` keeps them
    too, for the loss function (which reads ``pred["loss"]``) and the COCO metric.
    """

    order = -10  # before everything that reads xb

    def before_batch(self):
        self.learn.xb = (self.xb[0], self.yb[0])

    def after_loss(self):
        # per-component losses of the last batch, for logging (e.g. loss_cls, loss_bbox)
        self.learn.loss_parts = {k: float(v) for k, v in self.pred.items() if k.startswith("loss_")}


class NonFiniteLossGuard(Callback):
    """Stop training on a NaN or infinite loss with an error naming epoch, batch and learning rate.

    fastai's own ``TerminateOnNaNCallback`` cancels the fit quietly, so a headless run would exit
    0; this raises :class:`~fpn_lab.errors.TrainingError` instead. After every epoch whose losses
    were all finite, the model weights are saved to ``checkpoint`` (when given), so the last good
    state survives the failure.
    """

    order = 5

    def __init__(self, checkpoint: str | Path | None = None):
        self.checkpoint = Path(checkpoint) if checkpoint else None

    def after_loss(self):
        if not self.training or hasattr(self.learn, "lr_finder"):
            return  # lr_find stops on divergence by itself
        loss = float(self.learn.loss.detach())
        if not math.isfinite(loss):
            lr = self.opt.hypers[-1].get("lr", float("nan")) if self.opt is not None else float("nan")
            saved = f"; the last good weights are in {self.checkpoint}" if self.checkpoint and self.checkpoint.exists() else ""
            raise TrainingError(f"non-finite training loss {loss} at epoch {self.epoch}, batch {self.iter} "
                                f"(learning rate {lr:.3g}){saved}. Lower the learning rate or check the data.")

    def after_epoch(self):
        # lr_find's epochs end with deliberately diverged weights: never keep those as "good".
        if self.checkpoint is not None and not hasattr(self.learn, "lr_finder") and all(
                torch.isfinite(p).all() for p in self.learn.model.parameters()):
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint.with_suffix(".tmp")
            torch.save(self.learn.model.state_dict(), tmp)
            tmp.replace(self.checkpoint)
