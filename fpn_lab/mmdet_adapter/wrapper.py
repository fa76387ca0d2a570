"""Build an mmdet detector and drive it with fpn_lab batches.

:class:`MMDetModel` takes a batch of letterboxed ``uint8`` RGB images and fpn_lab targets, builds
mmdet's ``(inputs, list[DetDataSample])``, runs the detector's own ``data_preprocessor`` (so
normalisation and channel order are exactly mmdet's) and calls the detector in ``loss`` or
``predict`` mode. Nothing outside this package sees a ``DetDataSample``.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
from torch import nn

from fpn_lab.errors import ModelError
from fpn_lab.mmdet_adapter.config import load_config
from fpn_lab.mmdet_adapter.mmcv_ops import check_model
from fpn_lab.mmdet_adapter.necks import level_names, neck_strides


def _register() -> None:
    from mmdet.utils import register_all_modules

    from fpn_lab.mmdet_adapter.components import register

    register_all_modules(init_default_scope=True)
    register()  # fpn_lab.BiFPN, fpn_lab.EfficientDetHead


def build_detector(preset, *, num_classes: int, pretrained: str = "none", neck: str | None = None,
                   neck_args: dict | None = None, cfg_options: dict | None = None) -> MMDetModel:
    """Build ``preset`` for ``num_classes`` classes, with initial weights per ``pretrained``.

    ``init_weights()`` is always called, so heads start with their prior-probability bias
    (``bias_prob=0.01`` in RetinaNet/VFNet heads; YOLOX's own init) and, with
    ``pretrained="imagenet"``, the backbone loads the config's ImageNet checkpoint.

    Raises:
        ModelError: with ``cfg_options``, a component refused the values they gave it (a
            ``TypeError``/``ValueError``/``KeyError``/``AssertionError`` from its constructor,
            named with the keys given); without them such an error is raised as it is.
    """
    cfg = load_config(preset, num_classes=num_classes, pretrained=pretrained, neck=neck, neck_args=neck_args,
                      cfg_options=cfg_options)
    try:
        model = _build(cfg, preset, init_weights=True)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        if not cfg_options:
            raise
        raise ModelError(f"{preset.name} could not be built with cfg_options {dict(cfg_options)}: "
                         f"{type(e).__name__}: {e}. Give values the component's constructor accepts.") from e
    model.neck_choice = {"neck": neck, "neck_args": dict(neck_args or {})}
    model.cfg_options = dict(cfg_options or {})
    model.pretrained = pretrained
    return model


def build_detector_from_config(config: dict, preset) -> MMDetModel:
    """Rebuild a detector from a saved, resolved mmdet config (``config`` as plain dicts/lists,
    as :func:`~fpn_lab.checkpoint.save_checkpoint` stores it); weights are left to the caller
    (``init_weights`` is not called, so nothing is downloaded)."""
    from mmengine.config import Config

    return _build(Config(config), preset, init_weights=False)


def _build(cfg, preset, *, init_weights: bool) -> MMDetModel:
    _register()
    from mmdet.registry import MODELS

    from mmengine.logging import MMLogger

    detector = MODELS.build(copy.deepcopy(cfg.model))  # the build adds train_cfg/test_cfg to the head's cfg
    check_model(detector, preset.name)  # mmcv layers without a torchvision kernel: refused by name
    keep_mmcv_ops_contiguous(detector)  # compiled path: NaN offsets would crash mmcv's CPU kernel
    if init_weights:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)  # init_weights logs one INFO block per parameter
        try:
            detector.init_weights()
        finally:
            logger.setLevel(level)
    return MMDetModel(detector, preset, cfg)


def class_dependent_keys(model: MMDetModel) -> list[str]:
    """Names (in ``model.detector``'s state dict) of the tensors whose shape depends on the class count.

    Found by building the head once more with one class more and comparing shapes, so it holds
    for every head (RetinaNet's ``retina_cls``, VFNet's ``vfnet_cls``, YOLOX's
    ``multi_level_conv_cls``, Faster R-CNN's ``roi_head.bbox_head.fc_cls`` and ``fc_reg``...)
    without a list of names.
    """
    from mmdet.registry import MODELS

    if model.two_stage:  # the RoI head holds the classes (the RPN is class-agnostic)
        name, cfg = "roi_head", copy.deepcopy(model.cfg.model.roi_head)
        cfg.bbox_head.num_classes = int(cfg.bbox_head.num_classes) + 1
        cfg.update(train_cfg=model.cfg.model.train_cfg.rcnn, test_cfg=model.cfg.model.test_cfg.rcnn)
    else:
        name, cfg = "bbox_head", copy.deepcopy(model.cfg.model.bbox_head)
        cfg.num_classes = int(cfg.num_classes) + 1
        cfg.update(train_cfg=model.cfg.model.get("train_cfg"), test_cfg=model.cfg.model.get("test_cfg"))
    other = MODELS.build(cfg).state_dict()
    own = getattr(model.detector, name).state_dict()
    return [f"{name}.{k}" for k in own if k in other and other[k].shape != own[k].shape]


def _frozen_norm_train_mode(module: nn.Module) -> None:
    """Put ``module`` in train mode except its norm layers, which stay in eval mode."""
    module.train()
    for m in module.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            m.eval()


class MMDetModel(nn.Module):
    """An mmdet detector behind fpn_lab's batch format.

    ``forward(images, targets)``:

    * ``images``: ``uint8[B, 3, S, S]`` RGB, letterboxed (see :class:`~fpn_lab.data.transforms.Letterbox`).
    * ``targets``: list of B dicts with ``boxes`` ``float32[N, 4]`` xyxy in network-input pixels,
      ``labels`` ``int64[N]`` and ``geometry`` (:class:`~fpn_lab.data.transforms.Geometry`).

    Returns, in training mode: ``{"loss": scalar, <mmdet loss name>: scalar, ...}``. In eval mode:
    ``{"loss": ..., ..., "predictions": [...]}`` from one backbone + neck pass: the losses are
    computed with the head in training mode but every norm layer in eval mode, so validation
    never updates BatchNorm statistics (and VFNet's head, which returns fewer outputs in eval
    mode, still gives its training losses); the predictions are exactly :meth:`predict`'s.
    Targets without ``boxes`` (geometry only) give predictions only. Each prediction is a dict of
    ``boxes`` ``float32[M, 4]`` xyxy in network-input pixels, ``scores`` ``float32[M]`` and
    ``labels`` ``int64[M]``.
    """

    def __init__(self, detector: nn.Module, preset, cfg):
        super().__init__()
        self.detector, self.preset, self.cfg = detector, preset, cfg
        self.channels_last = False  # set by fpn_lab.models.build.place_model: inputs then go in NHWC too
        self._pad_value: tuple[float, float, float] | None = None
        # the rest of the input contract, set by make_learner from the data it trains on (None:
        # not trained here yet): the letterbox side and position, and the class names in label order
        self.image_size: int | None = None
        self.pad_position: str | None = None
        self.class_names: list[str] | None = None
        self.category_ids: list[int] | None = None  # the source's id of each class name

    @property
    def pad_value(self) -> tuple[float, float, float]:
        """The letterbox fill (RGB 0..255) this model is fed with: the one it was trained with
        (set by :func:`~fpn_lab.learner.learner.make_learner`, kept in checkpoints), else the
        preset's (114 grey for YOLOX, the ImageNet mean for VFNet and RetinaNet). Every path
        that letterboxes images for it (evaluation, prediction, export) reads it here."""
        return self._pad_value if self._pad_value is not None else tuple(float(v) for v in self.preset.pad_value)

    @pad_value.setter
    def pad_value(self, value) -> None:
        self._pad_value = None if value is None else tuple(float(v) for v in value)

    @property
    def recipe(self):
        """The training recipe of the preset's mmdet config (:class:`~fpn_lab.core.recipe.Recipe`)."""
        from fpn_lab.mmdet_adapter.config import recipe_from_config

        return recipe_from_config(self.cfg)

    @property
    def levels(self) -> tuple[str, ...]:
        """Feature levels the neck gives the head, e.g. ``("P3", "P4", "P5")``."""
        return level_names(neck_strides(self.cfg))

    @property
    def min_input_side(self) -> int:
        """The smallest input side, in pixels, the neck can take: 128 for NAS-FPN (it max-pools its
        stride-64 level into P7, stride 128, which needs two pixels to pool), else 32 (the
        coarsest backbone stride; fpn_lab's inputs are multiples of 32)."""
        return 128 if type(self.neck).__name__ == "NASFPN" else 32

    @property
    def two_stage(self) -> bool:
        """True for a detector with a region proposal network and RoI heads (Faster R-CNN)."""
        return bool(getattr(self.detector, "with_rpn", False))

    @property
    def num_classes(self) -> int:
        """Classes the head predicts (no background): labels are ``0 .. num_classes - 1``."""
        head = self.detector.roi_head.bbox_head if self.two_stage else self.detector.bbox_head
        return int(head.num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self.detector.backbone

    @property
    def neck(self) -> nn.Module:
        return self.detector.neck

    @property
    def head(self) -> nn.Module:
        """Everything after the neck: the ``bbox_head`` of a one-stage detector; of a two-stage one,
        ``nn.ModuleList([rpn_head, roi_head])`` (the optimiser's third parameter group)."""
        if self.two_stage:
            return nn.ModuleList([self.detector.rpn_head, self.detector.roi_head])
        return self.detector.bbox_head

    def _samples(self, images: torch.Tensor, targets):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        samples = []
        for i, t in enumerate(targets):
            g = t["geometry"]
            s = DetDataSample(metainfo=dict(img_shape=tuple(g.img_shape), ori_shape=tuple(g.img_shape),
                                            pad_shape=tuple(g.pad_shape), scale_factor=(1.0, 1.0), img_id=i))
            keep = t.get("train_mask")
            boxes, labels = t["boxes"], t["labels"]
            if keep is not None:
                boxes, labels = boxes[keep], labels[keep]
            s.gt_instances = InstanceData(bboxes=boxes.float().reshape(-1, 4), labels=labels.long().reshape(-1))
            samples.append(s)
        return samples

    def preprocess(self, images: torch.Tensor, targets, training: bool):
        """Run the detector's ``DetDataPreprocessor`` on fpn_lab input; returns ``(inputs, data_samples)``.

        mmdet pipelines load images as BGR; the preprocessor swaps to RGB where the config says
        ``bgr_to_rgb`` (VFNet, RetinaNet) and keeps BGR otherwise (YOLOX). We hand it BGR, as
        mmdet's own loaders do.
        """
        if min(images.shape[-2:]) < self.min_input_side:
            from fpn_lab.errors import ModelError

            raise ModelError(f"{type(self.neck).__name__} needs inputs of at least {self.min_input_side} px per side "
                             f"(see MMDetModel.min_input_side); got {tuple(images.shape[-2:])}. Set image_size to "
                             f"{self.min_input_side} or more, or choose another neck.")
        bgr = images.flip(1)
        data = self.detector.data_preprocessor({"inputs": bgr, "data_samples": self._samples(images, targets)},
                                               training=training)
        inputs = data["inputs"]
        if self.channels_last:  # NHWC weights compute fastest on NHWC inputs (bench/step_speed.py)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, data["data_samples"]

    def _loss(self, images, targets, training: bool) -> dict:
        inputs, samples = self.preprocess(images, targets, training)
        # what mmdet's SingleStageDetector.loss does, with the features kept for the non-finite check
        features = self.detector.extract_feat(inputs)
        return self._parsed_losses(lambda: self._head_loss(features, samples), features)

    def _head_loss(self, features, samples) -> dict:
        """mmdet's loss dict for the neck's ``features``: the head's ``loss`` (what
        ``SingleStageDetector.loss`` does after ``extract_feat``), or for a two-stage detector what
        ``TwoStageDetector.loss`` does: the RPN's losses on class-agnostic targets
        (``loss_rpn_cls``, ``loss_rpn_bbox``), then the RoI head's on the RPN's proposals
        (``loss_cls``, ``loss_bbox`` and ``acc``, its classification accuracy in percent)."""
        if not self.two_stage:
            return self.detector.bbox_head.loss(features, samples)
        det = self.detector
        rpn_samples = copy.deepcopy(samples)
        for s in rpn_samples:  # the RPN tells object from background: every box is class 0
            s.gt_instances.labels = torch.zeros_like(s.gt_instances.labels)
        rpn_losses, proposals = det.rpn_head.loss_and_predict(
            features, rpn_samples, proposal_cfg=det.train_cfg.get("rpn_proposal", det.test_cfg.rpn))
        losses = {(f"rpn_{k}" if "loss" in k and "rpn" not in k else k): v for k, v in rpn_losses.items()}
        losses.update(det.roi_head.loss(features, proposals, samples))
        return losses

    def _parsed_losses(self, compute, features) -> dict:
        """``{"loss": total, <loss name>: detached value, ...}`` from ``compute()`` (mmdet's loss dict).

        When the weights or the neck's ``features`` hold NaN or inf, mmdet's assigners and losses
        fail with raw errors (``all elements of input should be between 0 and 1``) before any loss
        exists: the result is then ``{"loss": nan, "nonfinite": <what was non-finite>}``, so that
        fastai's LR finder stops and :class:`~fpn_lab.learner.callbacks.NonFiniteLossGuard`
        raises a ``TrainingError`` naming the phase, epoch and batch. Any other failure is re-raised.
        """
        try:
            raw = compute()
        except RuntimeError as e:
            bad = [name for name, t in (*self.detector.named_parameters(),
                                        *((f"features[{i}]", f) for i, f in enumerate(features)))
                   if not torch.isfinite(t).all()]
            if not bad:
                raise
            nan = torch.full((), float("nan"), requires_grad=True)
            return {"loss": nan, "nonfinite": f"non-finite values in {', '.join(bad[:4])}"
                                              f"{' ...' if len(bad) > 4 else ''} (mmdet raised: {str(e).splitlines()[0]})"}
        loss, log_vars = self.detector.parse_losses(raw)
        return {"loss": loss, **{k: v.detach() for k, v in log_vars.items() if k != "loss"}}

    def predict(self, images: torch.Tensor, geometries) -> list[dict]:
        """Detections per image in network-input pixels (no rescale; map back with ``Geometry.to_original``)."""
        inputs, samples = self.predict_inputs(images, geometries)
        if self.two_stage:
            return self._predict_features(self.detector.extract_feat(inputs), samples)
        return self.decode(self.head_outputs(inputs), samples)

    def predict_inputs(self, images: torch.Tensor, geometries):
        """``(inputs, samples)`` for prediction: ``images`` (``uint8[B, 3, S, S]``, letterboxed)
        through the detector's own preprocessor (:meth:`preprocess`), and the mmdet data samples
        carrying each image's shapes, which :meth:`decode` reads."""
        targets = [{"geometry": g, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
                   for g in geometries]
        return self.preprocess(images, targets, training=False)

    def head_outputs(self, inputs: torch.Tensor) -> tuple:
        """The network's raw outputs for preprocessed ``inputs`` (``float32[B, 3, S, S]``): backbone,
        neck and head, before any decoding (mmdet's ``tensor`` mode). A tuple of groups, one per
        argument of the head's ``predict_by_feat`` (YOLOX: class scores, boxes, objectness;
        RetinaNet and VFNet: class scores, boxes), each a list with one ``float32[B, C, H, W]`` map
        per level. This is the part :func:`fpn_lab.export.export_onnx` exports.

        Raises:
            ModelError: a two-stage detector, whose second stage runs on the proposals the first
                one keeps after NMS, so it has no per-level outputs to decode afterwards.
        """
        if self.two_stage:
            raise ModelError(f"{self.preset.name} is a two-stage detector: its RoI head runs on the proposals its RPN "
                             "keeps after NMS (cropped with RoIAlign), so it has no per-level head outputs; use "
                             "predict(), which runs both stages.")
        return tuple(self.detector.bbox_head(self.detector.extract_feat(inputs)))

    def decode(self, outputs: tuple, samples) -> list[dict]:
        """Detections from :meth:`head_outputs` (computed here or by onnxruntime): the head's own
        ``predict_by_feat`` (box decoding, score threshold, NMS of the preset's ``test_cfg``), in
        network-input pixels: one dict per image of ``boxes`` ``float32[M, 4]`` xyxy, ``scores``
        ``float32[M]``, ``labels`` ``int64[M]``. The one post-processing path of every prediction."""
        # what mmdet's BaseDenseHead.predict does after its forward, without the rescale
        results = self.detector.bbox_head.predict_by_feat(*outputs, batch_img_metas=[s.metainfo for s in samples],
                                                          rescale=False)
        return [{"boxes": r.bboxes.float(), "scores": r.scores.float(), "labels": r.labels.long()} for r in results]

    def _predict_features(self, features, samples) -> list[dict]:
        if not self.two_stage:
            return self.decode(tuple(self.detector.bbox_head(features)), samples)
        # what mmdet's TwoStageDetector.predict does after extract_feat, without the rescale
        proposals = self.detector.rpn_head.predict(features, samples, rescale=False)
        results = self.detector.roi_head.predict(features, proposals, samples, rescale=False)
        return [{"boxes": r.bboxes.float(), "scores": r.scores.float(), "labels": r.labels.long()} for r in results]

    def forward(self, images: torch.Tensor, targets):
        if targets is None or len(targets) != len(images):
            raise ModelError(f"MMDetModel needs one target dict per image (with 'geometry'); got "
                             f"{None if targets is None else len(targets)} for {len(images)} images. "
                             "For inference without targets use predict_images() or model.predict().")
        if self.training:
            return self._loss(images, targets, training=True)
        if not all("boxes" in t for t in targets):  # geometry only: predictions
            with torch.no_grad():
                return {"predictions": self.predict(images, [t["geometry"] for t in targets])}
        # Validation: one backbone + neck pass (norm layers in eval mode, as in prediction) serves
        # both the loss, computed by the head in training mode (VFNet's head returns its training
        # outputs only there), and the predictions, made by the head in eval mode.
        with torch.no_grad():
            inputs, samples = self.preprocess(images, targets, training=False)
            features = self.detector.extract_feat(inputs)
            _frozen_norm_train_mode(self.head)
            try:
                out = self._parsed_losses(lambda: self._head_loss(features, samples), features)
            finally:
                self.head.eval()
            # a non-finite loss means non-finite outputs, on which mmdet's post-processing fails:
            # no predictions then (NonFiniteLossGuard stops the run on this batch)
            out["predictions"] = self._predict_features(features, samples) if torch.isfinite(out["loss"]) else []
        return out


def _contiguous_inputs(module, args):
    """Forward pre-hook of mmcv's compiled deformable convolutions: contiguous inputs, finite offsets.

    A NaN or infinite offset makes the CPU kernel index outside the image and crash the process
    (segmentation fault; seen when ``lr_find`` drives VFNet's weights to NaN). A RuntimeError here
    instead lets :meth:`MMDetModel._parsed_losses` report a NaN loss, which ``lr_find`` takes as
    its normal end and :class:`~fpn_lab.learner.callbacks.NonFiniteLossGuard` as an error.
    """
    for name, a in zip(("input", "offset", "mask"), args):
        if torch.is_tensor(a) and not torch.isfinite(a).all():
            raise RuntimeError(f"{type(module).__name__}: non-finite {name} (NaN or inf); mmcv's kernel would read "
                               "outside the feature map and crash the process")
    return tuple(a.contiguous() if torch.is_tensor(a) else a for a in args)


def keep_mmcv_ops_contiguous(model: nn.Module) -> int:
    """Guard mmcv's compiled deformable convolutions: NCHW inputs and weights, and finite offsets.

    Only where mmcv's compiled extension is in use (``FPN_LAB_MMCV=compiled``): its CPU
    ``DeformConv2d`` / ``ModulatedDeformConv2d`` kernels refuse non-contiguous inputs ("input must
    be contiguous") and crash the process on NaN offsets. Their weights are made contiguous again
    and a forward pre-hook (:func:`_contiguous_inputs`) checks the inputs are finite and hands them
    over contiguous; every other layer keeps its layout. torchvision's kernels (the default path,
    :mod:`~fpn_lab.mmdet_adapter.mmcv_ops`) take any layout and check finiteness themselves, so
    nothing is done there. Idempotent. Returns the number of guarded modules.
    """
    from fpn_lab.mmdet_adapter.mmcv_ext import ops_path

    if ops_path() != "compiled":
        return 0
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

    n = 0
    for m in model.modules():
        if isinstance(m, (DeformConv2d, ModulatedDeformConv2d)):
            m.weight.data = m.weight.data.contiguous()
            if not getattr(m, "_fpn_lab_contiguous_hook", False):
                m.register_forward_pre_hook(_contiguous_inputs)
                m._fpn_lab_contiguous_hook = True
            n += 1
    return n


@torch.no_grad()
def recompute_batchnorm_stats(model: MMDetModel, batches) -> int:
    """Re-estimate every BatchNorm's running mean/var as the exact average over ``batches``.

    After short trainings (or with a small BN momentum, YOLOX uses 0.03) the running statistics
    lag behind the weights, so eval-mode predictions are worse than the training loss suggests.
    This is detectron2's "precise BN": reset, then average the batch statistics of
    ``(images, targets)`` batches forwarded in training mode (no gradients, weights untouched).

    Returns the number of BatchNorm layers updated.

    Raises:
        ModelError: ``batches`` is empty; the statistics are left as they were.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    was_training = model.training
    model.detector.train()
    seen, done = 0, False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average = exact mean over the batches seen
        for images, targets in batches:
            inputs, samples = model.preprocess(images, targets, training=False)
            model.detector(inputs, samples, mode="tensor")
            seen += 1
        done = seen > 0
    finally:
        for m, (momentum, mean, var, count) in zip(bns, saved):
            m.momentum = momentum
            if not done:  # no batch, or one failed: keep the statistics as they were, not a partial average
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
        model.train(was_training)
    if not seen:
        raise ModelError("recompute_batchnorm_stats: no batches were given, so no statistics could be estimated; the "
                         "BatchNorm statistics were left as they were. Pass a non-empty list of (images, targets) "
                         "batches, e.g. [dls.train.one_batch() for _ in range(5)].")
    return len(bns)


@contextlib.contextmanager
def score_threshold(model: MMDetModel, value: float):
    """Temporarily set the head's test-time ``score_thr`` (e.g. 0.0 to see every kept detection)."""
    cfg = model.detector.roi_head.test_cfg if model.two_stage else model.detector.bbox_head.test_cfg
    old = cfg.get("score_thr")
    cfg["score_thr"] = value
    try:
        yield model
    finally:
        cfg["score_thr"] = old
