"""The learner factory: a fastai ``Learner`` over an :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`."""

from __future__ import annotations

import math
import tempfile
import warnings
from functools import partial
from pathlib import Path

import fastai.callback.progress  # noqa: F401  (progress bars and CSV-style table)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle, fine_tune, lr_find)
from fastai.learner import Learner
from fastai.torch_core import params
from torch import nn

from fpn_lab.errors import DataError, ParamsError
from fpn_lab.learner.callbacks import ImageAvgLoss, MMDetCallback, NonFiniteLossGuard
from fpn_lab.learner.ema import WeightEMA
from fpn_lab.learner.coco_metric import coco_metrics
from fpn_lab.learner.mode_switch import LastEpochsSwitch
from fpn_lab.learner.progress import epoch_loss_terms
from fpn_lab.learner.schedule import check_one_cycle
from fpn_lab.learner.optim import FusedAdam, FusedSGD
from fpn_lab.models.build import check_num_classes

#: fastai's Adam / SGD arithmetic, stepped by torch's fused kernels (:mod:`fpn_lab.learner.optim`).
OPTIMIZERS = {"adam": FusedAdam, "sgd": partial(FusedSGD, mom=0.9)}


def detection_loss(pred: dict, *targets):
    """The loss fastai back-propagates: the sum of the detector's loss terms (``pred["loss"]``)."""
    return pred["loss"]


def backbone_neck_head_splitter(model) -> list:
    """Parameter groups ``[backbone, neck, head]`` for ``freeze``/``fine_tune`` and discriminative lrs."""
    return [params(model.backbone), params(model.neck), params(model.head)]


def make_learner(dls, model, class_map, *, opt: str = "adam", wd: float = 0.01, checkpoint=None, cbs=(),
                 coco: bool | tuple[str, ...] = True, metrics=(), path=None, ema: bool = False,
                 ema_gamma: float | None = None, no_aug_epochs: int = 0, find_unused_parameters: bool = False,
                 sync_bn: bool = False, amp: bool = False, **kwargs) -> Learner:
    """A fastai ``Learner`` training ``model`` with COCO AP and AP50 as metric columns.

    Args:
        dls: from :func:`~fpn_lab.data.dataloaders.make_dataloaders`.
        model: :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`.
        class_map: the dataset's :class:`~fpn_lab.core.class_map.ClassMap` (names per label).
        opt: ``"adam"`` (fastai's Adam: decoupled weight decay, betas (0.9, 0.99), eps 1e-5),
            ``"sgd"`` (momentum 0.9), both stepped by torch's fused kernels
            (:class:`~fpn_lab.learner.optim.FusedAdam`, :class:`~fpn_lab.learner.optim.FusedSGD`), or
            ``"recipe"``: the preset's mmdet recipe (:func:`recipe_settings`; ``wd`` is then the
            recipe's).
        wd: weight decay; not applied to norm layers and biases (fastai ``wd_bn_bias=False``).
        checkpoint: path where :class:`NonFiniteLossGuard` keeps the last good weights (after each
            epoch whose weights are finite); default ``path/last_good.pth`` when ``path`` is given.
        coco: add the COCO AP / AP50 metric columns (computed on every validation pass), or a
            tuple of the COCO statistics to show (``("AP", "AP50", "AP_small")``); False: none.
        metrics: other fastai metrics, after the COCO columns.
        path: folder for fastai's own files (``lr_find`` keeps the weights it restores in
            ``path/models/``); default: a temporary folder, never the current directory.
        ema: keep YOLOX's exponential moving average of the weights (mmdet's ``ExpMomentumEMA``)
            and validate, predict and save with it (:class:`~fpn_lab.learner.ema.WeightEMA`);
            ``ema_gamma``: its warm-up in steps (default mmdet's 2000).
        no_aug_epochs: train the last this many epochs of each fit without augmentation and with
            YOLOX's L1 box loss (:class:`~fpn_lab.learner.mode_switch.LastEpochsSwitch`); 0: off.
        amp: mixed precision (fastai's ``MixedPrecision``: float16 autocast and a gradient scaler);
            CUDA only (:func:`fpn_lab.device.check_amp`).
        find_unused_parameters: DDP's flag for a forward that leaves parameters unused; used only
            in a process group (torchrun), where the learner gets
            :class:`~fpn_lab.distributed.trainer.DistributedTrainer` and ranks other than 0 keep
            fastai's files and the last good weights in a temporary folder (only rank 0 writes to
            ``path``).
        sync_bn: ``SyncBatchNorm`` across the processes of a group (CUDA only); unused outside one.

    The learner gets ``learn.class_map`` and ``learn.coco`` (the metric accumulator: last
    validation's detections and full COCO result).
    """
    check_num_classes(model, class_map, "make_learner")
    from fpn_lab.distributed import context
    from fpn_lab.distributed.trainer import DistributedTrainer

    dist = context()
    if checkpoint is None and path is not None:
        checkpoint = Path(path) / "last_good.pth"
    if not dist.is_main:  # rank 0 writes; the others' lr_find weights must not meet in one file
        path, checkpoint = None, None
    check_batch_for_batchnorm(model, dls.train.bs, _input_size(dls.train.dataset))
    _feed_alike(model, dls, class_map)
    cbs = list(cbs)
    if opt == "recipe":
        opt_func, wd, wd_bn_bias, extra = recipe_settings(model.recipe)
        kwargs.setdefault("wd_bn_bias", wd_bn_bias)
        cbs += extra
    elif opt in OPTIMIZERS:
        opt_func = OPTIMIZERS[opt]
    else:
        raise ParamsError(f"opt must be one of {sorted(OPTIMIZERS) + ['recipe']}; got {opt!r}.")
    if ema:
        cbs.append(WeightEMA(gamma=ema_gamma))
    if no_aug_epochs:
        cbs.append(LastEpochsSwitch(no_aug_epochs))
    if amp:
        from fastai.callback.fp16 import MixedPrecision

        from fpn_lab.device import check_amp

        check_amp(amp, str(next(model.parameters()).device))
        cbs.append(MixedPrecision())
    if dist.distributed:
        cbs.append(DistributedTrainer(find_unused_parameters=find_unused_parameters, sync_bn=sync_bn))
    elif find_unused_parameters or sync_bn:
        warnings.warn("find_unused_parameters / sync_bn only apply across processes (torchrun); this learner trains in "
                      "one process, so they do nothing.", stacklevel=2)
    coco_cols = (coco_metrics(tuple(coco)) if isinstance(coco, (tuple, list)) else coco_metrics()) if coco else []
    metrics = [*coco_cols, *metrics]
    learn = Learner(dls, model, loss_func=detection_loss, opt_func=opt_func, wd=wd, metrics=metrics,
                    splitter=backbone_neck_head_splitter, cbs=[MMDetCallback(), NonFiniteLossGuard(checkpoint), *cbs],
                    path=Path(path) if path else Path(tempfile.mkdtemp(prefix="fpn_lab-")), **kwargs)
    learn.recorder.loss = ImageAvgLoss()  # valid_loss weighted by images, not by the first image's boxes
    learn.class_map = class_map
    learn.coco = coco_cols[0].acc if coco_cols else None
    return learn


def train(learn: Learner, epochs: int, lr: float, *, fine_tune: bool = False, one_cycle: dict | None = None) -> None:
    """Train as the notebook does: fastai's one-cycle schedule from scratch, ``fine_tune`` (one
    frozen epoch, then all layers) from pretrained or given weights.

    Args:
        epochs: epochs of the (unfrozen) one-cycle fit (>= 1).
        lr: peak learning rate.
        one_cycle: fastai's one-cycle shape, any of ``pct_start`` (share of the steps warming
            up, default 0.25; fine_tune's 0.3), ``div`` (start lr = lr / div, default 25;
            fine_tune's 5) and ``div_final`` (end lr = lr / div_final, default 1e5). Leslie
            Smith, "Super-Convergence" (2018), via fastai's ``fit_one_cycle``.

    Raises:
        ParamsError: ``epochs`` < 1, ``lr`` <= 0, or a bad ``one_cycle``
            (:func:`~fpn_lab.learner.schedule.check_one_cycle`).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ParamsError(f"epochs must be a positive int; got {epochs!r}.")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ParamsError(f"lr must be a positive number; got {lr!r}.")
    one_cycle = check_one_cycle(one_cycle)
    if fine_tune:
        learn.fine_tune(epochs, lr, freeze_epochs=1, **one_cycle)
    else:
        learn.fit_one_cycle(epochs, lr, **one_cycle)


def history(learn) -> list[dict]:
    """Per-epoch values of the learner's last fit as dicts: ``epoch``, then fastai's recorder
    (``train_loss``, ``valid_loss`` and the metric columns, e.g. ``AP``, ``AP50``), then the mean of
    each of mmdet's loss terms over the epoch's training batches (``loss_cls``, ``loss_bbox``...;
    Faster R-CNN adds ``loss_rpn_cls``, ``loss_rpn_bbox`` and ``acc``)."""
    names = list(learn.recorder.metric_names[1:-1])
    return [{"epoch": i + 1, **{n: (float(v) if v is not None else None) for n, v in zip(names, row)},
             **epoch_loss_terms(learn, i)} for i, row in enumerate(learn.recorder.values)]


def find_lr(learn: Learner, num_it: int = 30, show_plot: bool = True) -> float:
    """fastai's ``lr_find`` for at most ``num_it`` iterations (weights and optimiser state
    restored, in every process under torchrun); returns the ``valley`` suggestion (the same in
    every process: the loss it reads is averaged over processes).

    Raises:
        ParamsError: ``num_it`` < 10 (fastai's valley heuristic needs at least ten points).
    """
    if not isinstance(num_it, int) or num_it < 10:
        raise ParamsError(f"lr_find needs at least 10 iterations for its suggestion; got {num_it!r}. "
                         "Set lr_find_iters >= 10, or lr_find_iters = 0 with a fixed lr to skip it.")
    from fpn_lab.distributed import fastai_sees_one_process

    with fastai_sees_one_process():  # under torchrun every process restores its own weights (no-op otherwise)
        suggestion = float(learn.lr_find(num_it=num_it, show_plot=show_plot).valley)
    tmp_dir = Path(learn.path) / learn.model_dir
    if tmp_dir.is_dir() and not any(tmp_dir.iterdir()):
        tmp_dir.rmdir()  # lr_find kept its weights there and restored them: leave no empty folder
    return suggestion


def _feed_alike(model, dls, class_map) -> None:
    """The model takes on the input contract it trains with: the training letterbox's side, fill
    and position (``image_size``, ``pad_value``, ``pad_position``) and the class names in label
    order with the source's category ids (``class_names``, ``category_ids``); the validation
    loader (the per-epoch metric) is letterboxed as the model is fed, and so is every later
    prediction on a dataset (:func:`fpn_lab.inference.letterboxed_for`)."""
    from fpn_lab.inference import letterboxed_for

    tfms = dls.train.dataset.tfms
    box = getattr(tfms, "letterbox", tfms)
    model.pad_value, model.image_size, model.pad_position = box.pad_value, box.size, box.position
    model.class_names = list(getattr(class_map, "names", class_map))
    model.category_ids = [int(c) for c in getattr(class_map, "category_ids", range(1, len(model.class_names) + 1))]
    dls.valid.dataset = letterboxed_for(model, dls.valid.dataset)


def _input_size(dataset) -> int:
    tfms = dataset.tfms
    return getattr(tfms, "letterbox", tfms).size


def check_batch_for_batchnorm(model, batch_size: int, image_size: int) -> None:
    """Warn for small BatchNorm batches; refuse batches that give BatchNorm one value per channel.

    The coarsest BatchNorm layers of every preset's backbone sit at stride 32, where an input of
    ``image_size`` pixels leaves ``ceil(image_size / 32)**2`` positions per image.

    Raises:
        DataError: ``batch_size * positions < 2``: training would fail inside torch with
            "Expected more than 1 value per channel".
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    positions = math.ceil(image_size / 32) ** 2
    if batch_size * positions < 2:
        raise DataError(f"batch_size {batch_size} at image_size {image_size} leaves BatchNorm a single value per "
                        f"channel at stride 32; use batch_size >= 2 or image_size >= 64.")
    if batch_size < 4:
        warnings.warn(f"batch_size {batch_size} < 4 with a BatchNorm model: its batch statistics will be noisy; "
                      "prefer 4 or more images per batch.", stacklevel=3)


def recipe_settings(recipe) -> tuple:
    """fastai settings for an mmdet :class:`~fpn_lab.core.recipe.Recipe`.

    Returns ``(opt_func, wd, wd_bn_bias, callbacks)``: SGD with the recipe's momentum and L2
    weight decay (mmdet's SGD couples decay into the gradient; fastai ``decouple_wd=False``) or
    Adam(W) with decoupled decay; weight decay on norms and biases unless the recipe zeroes it;
    fastai's ``GradientClip`` for ``clip_grad``. The learning rate and schedule stay the caller's
    (``fit_one_cycle``); use ``recipe.scaled_lr(batch_size)`` for mmdet's scaled rate.
    """
    from fastai.callback.training import GradientClip

    if recipe.optimizer.upper() == "SGD":
        opt_func = partial(FusedSGD, mom=recipe.momentum or 0.0, decouple_wd=False)
    else:
        opt_func = partial(FusedAdam, decouple_wd=True)
    wd_bn_bias = not (recipe.norm_decay_mult == 0 or recipe.bias_decay_mult == 0)
    cbs = [GradientClip(recipe.grad_clip_max_norm)] if recipe.grad_clip_max_norm else []
    return opt_func, recipe.weight_decay, wd_bn_bias, cbs
