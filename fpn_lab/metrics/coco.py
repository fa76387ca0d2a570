"""COCO box evaluation with pycocotools, in original-image pixel coordinates.

Ground truth comes from :class:`~fpn_lab.core.records.Record` objects. Ids are the source
dataset's own: ``image_id`` is :attr:`Record.image_id` (a COCO file's id as written, int or
string) and ``category_id`` is :attr:`ClassMap.category_ids` of the label (a COCO file's id;
``label + 1`` for VOC), so the results list evaluated here is the ``predictions.json`` a run
writes, and scoring it against the user's own annotation file with pycocotools gives the same AP.

Crowd regions (COCO ``iscrowd``) and VOC ``difficult`` objects are both given to pycocotools as
``iscrowd=1``, so a detection matching them is ignored (neither TP nor FP) under pycocotools'
crowd rule (IoU as intersection over the detection's area). That is close to, but not the same
as, VOC's rule for difficult objects (standard IoU, any overlap >= 0.5 ignored). ``area`` is the
box area (a COCO file's segmentation area may differ, which moves objects between the
small/medium/large ranges but not AP@[.5:.95] over all areas).
"""

from __future__ import annotations

import collections

import contextlib
import copy
import io
import math
from collections.abc import Sequence

import numpy as np

from fpn_lab.core.class_map import ClassMap
from fpn_lab.core.records import Record
from fpn_lab.errors import DataError

#: Names of the 12 values of ``COCOeval.stats``, in order (pycocotools ``COCOeval.summarize``).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def as_class_map(class_map: ClassMap | Sequence[str]) -> ClassMap:
    """A :class:`ClassMap`; a plain list of names gets the default ids (``label + 1``)."""
    return class_map if isinstance(class_map, ClassMap) else ClassMap(list(class_map))


def _image_id(value):
    """A JSON-ready image id: numpy ints to int, strings kept."""
    return value if isinstance(value, str) else int(value)


def records_to_coco(records: Sequence[Record], class_map: ClassMap | Sequence[str]) -> dict:
    """COCO ground-truth dict of ``records``: source image and category ids, boxes as xywh,
    ``area`` = box area, crowd and difficult boxes as ``iscrowd=1``.

    Raises:
        DataError: two records share an ``image_id`` (pycocotools would merge their ground truth).
    """
    class_map = as_class_map(class_map)
    cat_ids = class_map.category_ids
    counts = collections.Counter(_image_id(r.image_id) for r in records)
    shared = sorted((i for i, n in counts.items() if n > 1), key=str)
    if shared:
        raise DataError(f"{len(shared)} image id(s) are used by more than one record, e.g. {shared[:5]}: the evaluation "
                        "would merge their ground truth and detections. Fix: parse all images in one parser call, or "
                        "give each source distinct ids before combining them.")
    images, anns = [], []
    for r in records:
        images.append({"id": _image_id(r.image_id), "file_name": r.filepath.name, "height": r.height, "width": r.width})
        ignore = r.iscrowd | r.difficult
        for b, label, crowd in zip(r.boxes, r.labels, ignore):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": _image_id(r.image_id), "category_id": cat_ids[int(label)],
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": int(crowd)})
    cats = [{"id": cid, "name": n} for cid, n in zip(cat_ids, class_map.names)]
    return {"images": images, "annotations": anns, "categories": cats}


def detections_to_coco(image_id, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       class_map: ClassMap | Sequence[str]) -> list[dict]:
    """COCO results entries for one image.

    Args:
        image_id: the image's source id (:attr:`Record.image_id`).
        boxes: ``float[M, 4]`` xyxy in original-image pixels (written as xywh, rounded to 1e-3 px).
        scores: ``float[M]``; labels: ``int[M]`` 0-based, written as the class map's category id.
    """
    cat_ids = as_class_map(class_map).category_ids
    out = []
    for b, s, lab in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores).reshape(-1),
                         np.asarray(labels).reshape(-1)):
        out.append({"image_id": _image_id(image_id), "category_id": cat_ids[int(lab)],
                    "bbox": [round(float(b[0]), 3), round(float(b[1]), 3), round(float(b[2] - b[0]), 3),
                             round(float(b[3] - b[1]), 3)], "score": round(float(s), 5)})
    return out


def score_detections(records: Sequence[Record], detections: list[dict], class_map: ClassMap | Sequence[str]):
    """Score COCO-format ``detections`` (source ids, see :func:`detections_to_coco`) against
    ``records`` with pycocotools' ``COCOeval`` (bbox). To predict and score a model on a dataset,
    use :func:`fpn_lab.inference.evaluate`.

    Returns:
        ``{"AP": ..., "AP50": ..., <the 12 COCO stats>, "per_class_AP": {name: AP}, "message": str}``.
        AP values are fractions in 0..1 (AP = AP@[.5:.95], area all, 100 detections).
        With no ground-truth box at all every value is ``nan`` and ``message`` is
        ``"no ground-truth boxes"`` (pycocotools would report -1). With ground truth but no
        detection every value is 0.0. A class without ground truth has per-class AP ``nan``.
        Returned as ``(result, ev)`` with ``ev`` the evaluated and accumulated pycocotools
        ``COCOeval`` (its ``evalImgs`` and ``eval`` arrays: :mod:`fpn_lab.metrics.analysis`), or
        ``None`` when nothing was evaluated (no ground truth, or no detections).

    Raises:
        DataError: a detection names an image id or category id that the ground truth lacks.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    class_map = as_class_map(class_map)
    names = class_map.names
    gt = records_to_coco(records, class_map)
    nan = {k: math.nan for k in COCO_STAT_NAMES}
    if not any(not a["iscrowd"] for a in gt["annotations"]):
        return {**nan, "per_class_AP": {n: math.nan for n in names}, "message": "no ground-truth boxes"}, None
    counts = np.bincount([int(label) for r in records for label, ig in zip(r.labels, r.iscrowd | r.difficult) if not ig],
                         minlength=len(names))
    if not detections:
        return {**{k: 0.0 for k in COCO_STAT_NAMES},
                "per_class_AP": {n: (0.0 if c else math.nan) for n, c in zip(names, counts)},
                "message": "no detections"}, None
    unknown = {d["image_id"] for d in detections} - {im["id"] for im in gt["images"]}
    if unknown:
        raise DataError(f"detections name image ids that are not in the ground truth: {sorted(unknown, key=str)[:5]} "
                        f"(ground-truth ids look like {[im['id'] for im in gt['images'][:3]]}).")
    unknown = {d["category_id"] for d in detections} - set(class_map.category_ids)
    if unknown:
        raise DataError(f"detections name category ids {sorted(unknown)} that are not in the class map's "
                        f"{class_map.category_ids}.")
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
    # precision: [T iou thresholds, R recall points, K categories (sorted ids), A areas, M max dets]; area all, 100 dets.
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for label, (name, cid) in enumerate(zip(names, class_map.category_ids)):
        p = precision[:, :, list(ev.params.catIds).index(cid)]
        per_class[name] = float(p[p > -1].mean()) if counts[label] and (p > -1).any() else math.nan
    return {**stats, "per_class_AP": per_class, "message": ""}, ev


def per_class_table(result: dict):
    """:func:`score_detections`' per-class AP@[.5:.95] as a pandas DataFrame (index ``class``, column ``AP``)."""
    import pandas as pd

    return pd.DataFrame({"AP": result["per_class_AP"]}).rename_axis("class")

