"""COCO box evaluation with pycocotools, in original-image pixel coordinates.

Ground truth comes from :class:`~fpn_lab.core.records.Record` objects; category ids are
``label + 1``. Crowd regions (COCO ``iscrowd``) and VOC ``difficult`` objects are both given to
pycocotools as ``iscrowd=1``, so a detection matching them is ignored (neither TP nor FP) under
pycocotools' crowd rule (IoU as intersection over the detection's area). That is close to, but
not the same as, VOC's rule for difficult objects (standard IoU, any overlap >= 0.5 ignored).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence

import numpy as np

from fpn_lab.core.records import Record

#: Names of the 12 values of ``COCOeval.stats``, in order (pycocotools ``COCOeval.summarize``).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def records_to_coco(records: Sequence[Record], class_names: Sequence[str]) -> dict:
    """COCO ground-truth dict (boxes as xywh, ``area`` = box area, ids from ``record_id``)."""
    images, anns = [], []
    for r in records:
        images.append({"id": int(r.record_id), "file_name": r.filepath.name, "height": r.height, "width": r.width})
        ignore = r.iscrowd | r.difficult
        for b, label, crowd in zip(r.boxes, r.labels, ignore):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": int(r.record_id), "category_id": int(label) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": int(crowd)})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def detections_to_coco(record_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    """COCO results entries for one image: ``boxes`` ``float[M, 4]`` xyxy original pixels -> xywh."""
    out = []
    for b, s, lab in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores).reshape(-1),
                         np.asarray(labels).reshape(-1)):
        out.append({"image_id": int(record_id), "category_id": int(lab) + 1,
                    "bbox": [round(float(b[0]), 3), round(float(b[1]), 3), round(float(b[2] - b[0]), 3),
                             round(float(b[3] - b[1]), 3)], "score": round(float(s), 5)})
    return out


def coco_evaluate(records: Sequence[Record], detections: list[dict], class_names: Sequence[str]) -> dict:
    """Evaluate COCO-format ``detections`` against ``records``.

    Returns:
        ``{"AP": ..., "AP50": ..., <the 12 COCO stats>, "per_class_AP": {name: AP}, "message": str}``.
        AP values are fractions in 0..1 (AP = AP@[.5:.95], area all, 100 detections).
        With no ground-truth box at all every value is ``nan`` and ``message`` is
        ``"no ground-truth boxes"`` (pycocotools would report -1). With ground truth but no
        detection every value is 0.0. A class without ground truth has per-class AP ``nan``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = records_to_coco(records, class_names)
    nan = {k: math.nan for k in COCO_STAT_NAMES}
    if not any(not a["iscrowd"] for a in gt["annotations"]):
        return {**nan, "per_class_AP": {n: math.nan for n in class_names}, "message": "no ground-truth boxes"}
    counts = np.bincount([a["category_id"] - 1 for a in gt["annotations"] if not a["iscrowd"]], minlength=len(class_names))
    if not detections:
        return {**{k: 0.0 for k in COCO_STAT_NAMES},
                "per_class_AP": {n: (0.0 if c else math.nan) for n, c in zip(class_names, counts)},
                "message": "no detections"}
    known = {im["id"] for im in gt["images"]}
    unknown = {d["image_id"] for d in detections} - known
    if unknown:
        raise ValueError(f"detections name image ids that are not in the ground truth: {sorted(unknown)[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))  # loadRes adds keys to the dicts it is given
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) if v >= 0 else math.nan for k, v in zip(COCO_STAT_NAMES, ev.stats)}
    # precision: [T iou thresholds, R recall points, K classes, A areas, M max dets]; area all, 100 dets.
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k]
        per_class[name] = float(p[p > -1].mean()) if counts[k] and (p > -1).any() else math.nan
    return {**stats, "per_class_AP": per_class, "message": ""}
