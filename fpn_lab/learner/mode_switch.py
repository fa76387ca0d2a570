"""YOLOX's last-epochs switch as a fastai callback: augmentation off (and the L1 box loss on) at the end."""

from __future__ import annotations

from fastai.callback.core import Callback
from fastai.torch_core import get_model  # the module inside a DistributedDataParallel wrapper (torchrun)

from fpn_lab.errors import ParamsError


class LastEpochsSwitch(Callback):
    """Train the last ``num_epochs`` epochs of a fit without augmentation, and with YOLOX's L1 loss.

    YOLOX trains its final 15 of 300 epochs on un-augmented images with an extra L1 loss on the
    box offsets (mmdet's ``YOLOXModeSwitchHook``, after Ge et al. 2021, "YOLOX: Exceeding YOLO
    Series in 2021", section 2.2). Here, from epoch ``n_epoch - num_epochs`` of each fit (not of
    ``lr_find``): the training dataset's :class:`~fpn_lab.data.transforms.Augment` is replaced by
    its own final letterbox (the images validation sees), and a head with ``use_l1`` (YOLOX)
    turns it on. Both are restored when the fit ends (and, after a fit that failed, when the next
    fit begins).

    Args:
        num_epochs: epochs at the end of each fit to train without augmentation (>= 1).
        l1: turn on the head's L1 loss in those epochs (heads without ``use_l1`` ignore it; the
            augmentation switch applies to every head).

    Raises:
        ParamsError: ``num_epochs`` < 1 or not an int; when a fit starts, a training loader with worker
            processes (they keep their own copy of the dataset, so the switch could not reach
            them: use ``num_workers = 0``), or a training dataset without augmentation to remove.
    """

    order = -5  # before the loader is iterated for the epoch

    def __init__(self, num_epochs: int = 1, l1: bool = True):
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ParamsError(f"last-epochs switch: num_epochs must be a positive int; got {num_epochs!r}.")
        self.num_epochs, self.l1 = num_epochs, l1
        self._saved = None

    def before_fit(self):
        self._restore()  # a previous fit that raised never reached after_fit
        if not hasattr(self.learn, "lr_finder"):
            self._check()  # before any epoch trains, not at the switch

    def _check(self):
        from fpn_lab.data.transforms import Augment

        dl = self.learn.dls.train
        ds = dl.dataset
        workers = getattr(getattr(dl, "fake_l", None), "num_workers", 0)  # fastai keeps its own 1 in dl.num_workers
        if workers:
            raise ParamsError(f"the last-epochs switch needs num_workers = 0 (got {workers}): worker processes "
                              "keep their own copy of the augmentation. Set num_workers = 0 or no_aug_epochs = 0.")
        if not isinstance(getattr(ds, "tfms", None), Augment):
            raise ParamsError(f"the last-epochs switch turns augmentation off, but the training dataset's transform is "
                              f"{type(getattr(ds, 'tfms', None)).__name__}, not aug_tfms(...): nothing to switch off.")

    def before_epoch(self):
        if hasattr(self.learn, "lr_finder") or self._saved is not None:
            return
        if self.epoch < self.n_epoch - self.num_epochs:
            return
        ds = self.learn.dls.train.dataset
        head = getattr(get_model(self.learn.model).detector, "bbox_head", None)  # YOLOX's carries use_l1
        self._saved = (ds, ds.tfms, getattr(head, "use_l1", None))
        ds.tfms = ds.tfms.letterbox
        if self.l1 and head is not None and hasattr(head, "use_l1"):
            head.use_l1 = True

    def after_fit(self):
        self._restore()

    def _restore(self):
        if self._saved is not None:
            ds, tfms, use_l1 = self._saved
            ds.tfms = tfms
            if use_l1 is not None:
                get_model(self.learn.model).detector.bbox_head.use_l1 = use_l1
            self._saved = None
