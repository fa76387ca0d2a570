"""The fastai callback that trains a learner across the processes of a group (:mod:`fpn_lab.distributed`)."""

from __future__ import annotations

from fastai.callback.core import Callback

from fpn_lab.distributed import context, mean_over_processes, sum_over_processes
from fpn_lab.errors import ParamsError


class DistributedTrainer(Callback):
    """Train one learner across the processes of a group with ``DistributedDataParallel``.

    For each fit (``lr_find`` included): the training loader shares its shuffled order among the
    processes (:func:`~fpn_lab.distributed.shard_indices`, each process's last incomplete batch dropped and the step
    count made equal: :func:`~fpn_lab.distributed.common_steps`), the validation loader shares the images in order,
    padded to equal batches (both from the learner's creation on, so ``lr_find`` counts the
    shared loader's batches); the model is wrapped in DDP (weights and buffers broadcast from
    rank 0, gradients averaged) and unwrapped after the fit, so ``learn.model`` and the notebook's
    ``model`` are the plain module again. After every training batch the loss is averaged over
    processes; after a validation batch it is averaged weighting each process's batch by its own
    images (a repeated image that only fills a batch weighs nothing), and ``valid_loss`` is that
    weighted mean over the pass, so each validation image counts once, as in one process.

    Args:
        find_unused_parameters: DDP's flag, for models whose forward leaves some parameters
            unused (every preset uses all; turning it on costs a graph traversal per step).
        sync_bn: convert BatchNorm to ``SyncBatchNorm`` (batch statistics over all processes);
            CUDA only.

    Raises:
        ParamsError: ``sync_bn`` on the CPU (torch's SyncBatchNorm has no CPU implementation).
    """

    order = -5  # after MMDetCallback (-10) in after_loss, before NonFiniteLossGuard (5) and the recorder (50)

    def __init__(self, find_unused_parameters: bool = False, sync_bn: bool = False):
        self.find_unused_parameters, self.sync_bn = bool(find_unused_parameters), bool(sync_bn)
        self.ctx = context()
        if self.sync_bn and self.ctx.backend != "nccl":
            raise ParamsError("sync_bn: true needs CUDA (torch's SyncBatchNorm has no CPU implementation); with "
                              f"backend {self.ctx.backend} BatchNorm stays per process. Set sync_bn: false.")

    def after_create(self):
        self._shard()  # at once: lr_find counts its epochs from len(dls.train) before it fits

    def _shard(self):
        if not self.ctx.distributed:
            return
        for dl, pad in ((self.dls.train, False), (getattr(self.dls, "valid", None), True)):
            if dl is None:
                continue
            if not hasattr(dl, "set_shard"):
                raise ParamsError(f"{type(dl).__name__} cannot share its data among processes; under torchrun build the "
                                  "loaders with fpn_lab (model_type.train_dl / valid_dl, make_dataloaders).")
            dl.set_shard(self.ctx.rank, self.ctx.world_size, pad=pad)

    def before_fit(self):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        if not self.ctx.distributed:
            return
        self._shard()
        model = self.learn.model
        if self.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.ctx.local_rank] if self.ctx.backend == "nccl" else None
        self.plain = model
        self.learn.model = DistributedDataParallel(model, device_ids=ids,
                                                   find_unused_parameters=self.find_unused_parameters)

    def before_validate(self):
        self._valid_sum, self._valid_images = 0.0, 0.0

    def after_loss(self):
        if not self.ctx.distributed:
            return
        if self.training:
            self.learn.loss = mean_over_processes(self.learn.loss)
            return
        dl = self.learn.dl
        real = getattr(dl, "real", None)
        bs = len(self.learn.yb[0]) if self.learn.yb else dl.bs
        own = bs if real is None else max(0, min(dl.bs, real - self.learn.iter * dl.bs))
        weighted, images = sum_over_processes(self.learn.loss.detach().float() * own, float(own))
        if images > 0:
            self.learn.loss = (weighted / images).to(self.learn.loss.dtype)
        self._valid_sum += float(weighted)
        self._valid_images += images

    def after_validate(self):
        """Hand the recorder the image-weighted mean over processes (it would weight each
        process's batches by their size, repeats included). Runs before the recorder's own."""
        if not self.ctx.distributed or not getattr(self, "_valid_images", 0):
            return
        import torch

        smooth = self.learn.recorder.loss
        smooth.total, smooth.count = torch.tensor(self._valid_sum), self._valid_images

    def after_fit(self):
        if self.ctx.distributed:
            self.learn.model = self.plain
