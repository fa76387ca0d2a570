"""Neck outputs and the pyramid level the model's own assigner gives each ground-truth box."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def neck_features(model, images: torch.Tensor, targets) -> list[torch.Tensor]:
    """The neck's outputs for a batch: one ``float32[B, C, H_l, W_l]`` per level, finest first."""
    model.eval()
    inputs, _ = model.preprocess(images, targets, training=False)
    return list(model.detector.extract_feat(inputs))


def _priors(head, feats, with_stride=False):
    sizes = [f.shape[-2:] for f in feats]
    gen = head.atss_prior_generator if getattr(head, "use_atss", False) else head.prior_generator
    kw = {"with_stride": True} if with_stride else {}
    return gen.grid_priors(sizes, dtype=feats[0].dtype, device=feats[0].device, **kw)


def _assign_one(head, feats, i: int, gt) -> torch.Tensor:
    """``gt_inds`` (1-based, 0 = background) for every prior of image ``i``, all levels concatenated."""
    from mmengine.structures import InstanceData

    kind = type(head).__name__
    if kind == "YOLOXHead":
        priors = torch.cat(_priors(head, feats, with_stride=True))
        cls, reg, obj = head(tuple(f[i:i + 1] for f in feats))
        flat = lambda xs, c: torch.cat([x.permute(0, 2, 3, 1).reshape(-1, c) for x in xs])  # noqa: E731
        cls, reg, obj = flat(cls, head.cls_out_channels), flat(reg, 4), flat(obj, 1)[:, 0]
        boxes = head._bbox_decode(priors, reg)
        offset = torch.cat([priors[:, :2] + priors[:, 2:] * 0.5, priors[:, 2:]], dim=-1)
        pred = InstanceData(bboxes=boxes, scores=(cls.sigmoid() * obj.sigmoid()[:, None]).sqrt(), priors=offset)
        return head.assigner.assign(pred_instances=pred, gt_instances=gt).gt_inds
    mlvl = _priors(head, feats)
    if kind == "FCOSHead":  # no assigner: FCOS's own targets (a box to the points inside it, by regress range)
        return _fcos_gt_inds(head, mlvl, gt)
    pred = InstanceData(priors=torch.cat(mlvl))
    if kind == "VFNetHead" or "ATSS" in type(head.assigner).__name__:
        return head.assigner.assign(pred, [len(p) for p in mlvl], gt).gt_inds
    return head.assigner.assign(pred, gt).gt_inds


def _fcos_gt_inds(head, mlvl, gt) -> torch.Tensor:
    """``gt_inds`` for FCOS: its head's own targets (``_get_targets_single``: points inside a box,
    or in its centre region, whose largest distance to the box's sides falls in the level's regress
    range; the smallest box when several qualify), the box of each positive point found again from
    its regression target (the point minus / plus the distances to the sides is the box exactly)."""
    from mmdet.structures.bbox import bbox_overlaps

    points = torch.cat(mlvl)
    ranges = torch.cat([p.new_tensor(r)[None].expand(len(p), 2) for p, r in zip(mlvl, head.regress_ranges)])
    labels, targets = head._get_targets_single(gt, points, ranges, [len(p) for p in mlvl])
    inds = torch.zeros(len(points), dtype=torch.long, device=points.device)
    pos = labels < head.num_classes
    if pos.any():
        boxes = torch.cat([points[pos] - targets[pos, :2], points[pos] + targets[pos, 2:]], dim=1)
        inds[pos] = bbox_overlaps(boxes, gt.bboxes).argmax(dim=1) + 1
    return inds


@torch.no_grad()
def assigned_levels(model, images: torch.Tensor, targets) -> list[np.ndarray]:
    """For each image, ``int64[N]``: the level index (0 = finest) holding most of the positive
    priors the model's training assigner gives each ground-truth box (-1: no positive prior).

    Uses the head's own assigner (RetinaNet: MaxIoU on anchors; VFNet: ATSS; FCOS: its regress
    ranges per level, no assigner; YOLOX: SimOTA on the current predictions, so it changes as the
    model trains). For a two-stage detector (Faster R-CNN) it is the level its RoI extractor crops
    the box's features from, by size alone: ``floor(log2(sqrt(w * h) / 56))`` clipped to P2-P5
    (mmdet's ``SingleRoIExtractor.map_roi_levels``, ``finest_scale=56``: the FPN paper's eq. 1,
    ``k = floor(4 + log2(sqrt(w * h) / 224))``, Lin et al. 2017, section 4.2), always >= 0.
    """
    from mmengine.structures import InstanceData

    if model.two_stage:  # by size alone: no forward pass needed
        extractor = model.detector.roi_head.bbox_roi_extractor
        return [extractor.map_roi_levels(torch.cat([torch.zeros(len(t["boxes"]), 1), t["boxes"].float().reshape(-1, 4)],
                                                   dim=1), extractor.num_inputs).long().numpy()
                for t in targets]
    feats = neck_features(model, images, targets)
    head = model.detector.bbox_head
    per_level = [f.shape[-2] * f.shape[-1] * getattr(head, "num_base_priors", 1) for f in feats]
    level_of = torch.repeat_interleave(torch.arange(len(feats)), torch.tensor(per_level))
    out = []
    for i, t in enumerate(targets):
        gt = InstanceData(bboxes=t["boxes"].float().reshape(-1, 4), labels=t["labels"].long().reshape(-1))
        if len(gt) == 0:
            out.append(np.zeros(0, np.int64))
            continue
        gt_inds = _assign_one(head, feats, i, gt)
        levels = []
        for j in range(len(gt)):
            hits = level_of[gt_inds == j + 1]
            levels.append(int(torch.bincount(hits, minlength=len(feats)).argmax()) if len(hits) else -1)
        out.append(np.array(levels, np.int64))
    return out
