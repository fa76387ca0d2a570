"""What a detector gets wrong, from the COCO evaluation already done: AP by object size, precision /
recall / F1 against the score threshold, the precision-recall curve, a confusion matrix and the
worst images.

Sources of each number:

* **AP / AR by size**: pycocotools' own stats (``COCOeval.stats``, COCO's area ranges in original
  pixels: small ``area <= 32²``, medium ``32² <= area <= 96²``, large ``area >= 96²``, as
  ``COCOeval.params.areaRng``), beside the count of ground-truth boxes in each range that the
  metric scores (crowd and VOC ``difficult`` boxes excluded). A range without boxes is ``None``
  with a note, never COCO's -1.
* **PR curve** per class at IoU 0.5: ``COCOeval.eval["precision"][0, :, k, 0, -1]`` (IoU 0.5, all
  areas, 100 detections) over COCO's 101 recall points; the interpolated precision AP50 averages.
* **P, R, F1 against the score threshold** per class at IoU 0.5: from ``COCOeval.evalImgs`` (the
  same matching the AP uses, detections on ignored boxes left out): at threshold ``t``,
  ``P = TP(s >= t) / D(s >= t)``, ``R = TP(s >= t) / G``, ``F1 = 2PR / (P + R)`` (0 where no
  detection scores ``>= t``). The suggested threshold maximises the mean F1 over the classes that
  have ground truth (the rule Ultralytics reports for its F1 curve).
* **Confusion matrix** at IoU 0.5 and a score threshold: a second matching that also pairs boxes
  across classes is needed, since COCO matches within each class only. Per image, detections
  scoring ``>= t`` and scored ground-truth boxes are paired greedily by IoU, highest first, one to
  one, pairs with IoU ``>= 0.5``: first within each class (so a wrong-class detection with a higher
  IoU cannot take a box that a right-class detection overlaps; COCO's own matching goes by score
  within a class and can pair fewer), then the boxes and detections left over across classes. A pair adds one to
  ``[true class, predicted class]``, an unpaired box to
  ``[true class, background]``, an unpaired detection to ``[background, predicted class]``. A
  detection left unpaired that covers a crowd or difficult box (pycocotools' crowd IoU ``>= 0.5``)
  is not counted, as the metric ignores it. Ultralytics' ``ConfusionMatrix`` follows the same idea.
* **Worst images**: per image, false positives (unpaired or wrong-class detections) plus misses
  (unpaired or wrong-class boxes) from that matching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fpn_lab.core.records import Record
from fpn_lab.errors import ParamsError
from fpn_lab.metrics.coco import as_class_map

SIZES = ("small", "medium", "large")
IOU = 0.5
#: score thresholds of the P / R / F1 curves: 0.00, 0.01, ..., 1.00
SCORE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)


def check_threshold(value) -> float | str:
    """``"auto"`` or a score in ``[0, 1]``; else :class:`~fpn_lab.errors.ParamsError`."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ParamsError(f"detection_threshold: expected a score in [0, 1] or 'auto' (the threshold with the best "
                          f"mean F1 on the validation split); got {value!r}.")
    return float(value)


@dataclass
class ImageErrors:
    """One image's outcome at IoU 0.5 and the analysis' score threshold. Boxes are ``float32[N, 4]``
    xyxy in original pixels; ``tp`` pairs ``(gt index, detection index)`` of the same class."""

    index: int
    image_id: object
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    tp: list = field(default_factory=list)
    wrong_class: list = field(default_factory=list)  # (gt index, detection index) paired across classes
    fp: list = field(default_factory=list)  # detection indices paired with nothing
    fn: list = field(default_factory=list)  # gt indices paired with nothing

    @property
    def n_fp(self) -> int:
        return len(self.fp) + len(self.wrong_class)

    @property
    def n_fn(self) -> int:
        return len(self.fn) + len(self.wrong_class)


@dataclass
class Analysis:
    """The result of :func:`analyse`. Arrays are indexed by class label ``k`` (0-based, the class
    map's order); ``confusion`` has one more row and column, the last, for background."""

    class_names: list[str]
    score_threshold: float
    by_size: dict
    gt_counts: np.ndarray  # int[K] scored ground-truth boxes per class
    thresholds: np.ndarray = field(default_factory=lambda: SCORE_THRESHOLDS.copy())
    precision: np.ndarray | None = None  # float[K, S] at each score threshold, nan where no detection
    recall: np.ndarray | None = None  # float[K, S]
    f1: np.ndarray | None = None  # float[K, S]
    pr_recall: np.ndarray | None = None  # float[101], COCO's recall points
    pr_precision: np.ndarray | None = None  # float[K, 101], nan for a class without ground truth
    best_threshold: float = math.nan
    best_mean_f1: float = math.nan
    confusion: np.ndarray | None = None  # int64[K + 1, K + 1]: rows true class, columns predicted
    images: list = field(default_factory=list)  # ImageErrors per image, dataset order

    @property
    def confusion_normalised(self) -> np.ndarray:
        """``confusion`` with each row divided by its sum (nan for an empty row)."""
        c = self.confusion.astype(np.float64)
        sums = c.sum(axis=1, keepdims=True)
        return np.divide(c, sums, out=np.full_like(c, np.nan), where=sums > 0)

    def worst(self, n: int = 6) -> list[ImageErrors]:
        """The ``n`` images with the most false positives plus misses (ties: more misses first,
        then dataset order); images without any error are left out."""
        ranked = sorted((e for e in self.images if e.n_fp + e.n_fn), key=lambda e: (-(e.n_fp + e.n_fn), -e.n_fn, e.index))
        return ranked[:n]

    def size_table(self):
        """AP, AR and box count per size range as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.by_size).T.rename_axis("size")

    def as_dict(self, n_worst: int = 10) -> dict:
        """JSON-ready summary for ``metrics.json`` (``analysis``)."""
        def arr(a, nd=4):
            return None if a is None else [[None if math.isnan(v) else round(float(v), nd) for v in row]
                                           for row in np.atleast_2d(a)]

        names = [*self.class_names, "background"]
        best = {"score": None if math.isnan(self.best_threshold) else self.best_threshold,
                "mean_F1": None if math.isnan(self.best_mean_f1) else round(self.best_mean_f1, 4)}
        if self.f1 is not None and best["score"] is not None:
            j = int(np.argmin(np.abs(self.thresholds - self.best_threshold)))
            best["per_class"] = {n: {"P": _r(self.precision[k, j]), "R": _r(self.recall[k, j]), "F1": _r(self.f1[k, j])}
                                 for k, n in enumerate(self.class_names)}
        return {
            "by_size": self.by_size,
            "best_threshold": best,
            "confusion_matrix": None if self.confusion is None else {
                "iou": IOU, "score_threshold": self.score_threshold, "rows": "true class", "columns": "predicted class",
                "labels": names, "counts": self.confusion.tolist(), "row_normalised": arr(self.confusion_normalised, 3)},
            "curves": None if self.f1 is None else {
                "iou": IOU, "score_thresholds": self.thresholds.tolist(),
                **{key: dict(zip(self.class_names, arr(getattr(self, key)))) for key in ("precision", "recall", "f1")},
                "pr_recall": self.pr_recall.round(2).tolist(),
                "pr_precision": dict(zip(self.class_names, arr(self.pr_precision)))},
            "worst_images": [{"image_id": e.image_id, "false_positives": e.n_fp, "misses": e.n_fn, "true_positives": len(e.tp)}
                             for e in self.worst(n_worst)],
        }


def _r(v) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 4)


def _size_section(result: dict, records: Sequence[Record], ev) -> dict:
    if ev is not None:
        ranges = dict(zip(ev.params.areaRngLbl, ev.params.areaRng))
    else:  # pycocotools' defaults
        ranges = {"small": [0, 32 ** 2], "medium": [32 ** 2, 96 ** 2], "large": [96 ** 2, 1e5 ** 2]}
    areas = np.array([float((b[2] - b[0]) * (b[3] - b[1])) for r in records
                      for b, ig in zip(r.boxes, r.iscrowd | r.difficult) if not ig])
    out = {}
    for size in SIZES:
        lo, hi = ranges[size]
        n = int(((areas >= lo) & (areas <= hi)).sum())
        ap, ar = result.get(f"AP_{size}"), result.get(f"AR_{size}")
        entry = {"AP": _r(ap) if n else None, "AR": _r(ar) if n else None, "boxes": n,
                 "area_px2": [lo, None if hi >= 1e10 else hi]}
        if not n:
            entry["note"] = "no ground-truth boxes in this range"
        out[size] = entry
    return out


def _curves(ev, class_map, k_count: int):
    """P, R, F1 per class and score threshold, and COCO's PR curve at IoU 0.5, from ``ev``."""
    p = ev.params
    t0 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - IOU)))
    all_area, max_det = p.areaRng[0], p.maxDets[-1]
    cat_index = {cid: list(p.catIds).index(cid) for cid in class_map.category_ids}
    scores = [[] for _ in range(k_count)]
    tps = [[] for _ in range(k_count)]
    gts = np.zeros(k_count, np.int64)
    label_of = {cid: k for k, cid in enumerate(class_map.category_ids)}
    for e in ev.evalImgs:
        if e is None or e["aRng"] != all_area or e["maxDet"] != max_det:
            continue
        k = label_of[e["category_id"]]
        keep = ~np.asarray(e["dtIgnore"], bool).reshape(len(p.iouThrs), -1)[t0]
        matches = np.asarray(e["dtMatches"]).reshape(len(p.iouThrs), -1)[t0]
        scores[k].append(np.asarray(e["dtScores"], np.float64)[keep])
        tps[k].append(matches[keep] > 0)
        gts[k] += int((~np.asarray(e["gtIgnore"], bool)).sum())
    th = SCORE_THRESHOLDS
    P, R, F = (np.full((k_count, len(th)), np.nan) for _ in range(3))
    for k in range(k_count):
        s = np.concatenate(scores[k]) if scores[k] else np.zeros(0)
        tp = np.concatenate(tps[k]) if tps[k] else np.zeros(0, bool)
        above = s[None, :] >= th[:, None]  # [S, D]
        d = above.sum(1)
        t = (above & tp[None, :]).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            P[k] = np.where(d > 0, t / np.maximum(d, 1), np.nan)
            R[k] = t / gts[k] if gts[k] else np.nan
            F[k] = np.where((d > 0) & (t > 0), 2 * P[k] * R[k] / (P[k] + R[k]), 0.0) if gts[k] else np.nan
    prec = np.asarray(ev.eval["precision"])[t0, :, :, 0, -1]  # [R, K sorted ids]
    pr = np.stack([prec[:, cat_index[cid]] for cid in class_map.category_ids]).astype(np.float64)
    pr[pr < 0] = np.nan
    return P, R, F, np.asarray(p.recThrs, np.float64), pr, gts


def _box_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU ``float[len(a), len(b)]`` of xyxy boxes by pycocotools' ``maskUtils.iou`` (``crowd``:
    per box of ``b``, intersection over the area of the ``a`` box instead)."""
    from pycocotools import mask as mask_utils

    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    xywh = lambda x: np.column_stack([x[:, :2], x[:, 2:] - x[:, :2]]).astype(np.float64)  # noqa: E731
    flags = np.zeros(len(b), np.uint8) if crowd is None else np.asarray(crowd, np.uint8)
    return np.asarray(mask_utils.iou(xywh(a), xywh(b), flags)).reshape(len(a), len(b))


def match_image(gt_boxes, gt_ignore, boxes, iou: float = IOU, gt_labels=None, labels=None):
    """Greedy matching of one image (the module docstring's rule).

    Args:
        gt_boxes: ``float[G, 4]`` xyxy; gt_ignore: ``bool[G]`` (crowd / difficult); boxes:
            ``float[D, 4]`` detections already cut at the score threshold.
        gt_labels, labels: ``int[G]`` and ``int[D]``: pairs within a class are made first, then
            across classes among what is left; ``None``: classes play no part.

    Returns:
        ``(pairs, unpaired_gt, unpaired_det)``: ``(g, d)`` pairs with IoU >= ``iou``; scored
        ground-truth indices left unpaired; detection indices left unpaired and not covering an
        ignored box.
    """
    gt_boxes, boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4), np.asarray(boxes, np.float64).reshape(-1, 4)
    scored = np.flatnonzero(~np.asarray(gt_ignore, bool))
    ignored = np.flatnonzero(np.asarray(gt_ignore, bool))
    ious = _box_iou(boxes, gt_boxes[scored])  # [D, G scored]
    candidates = sorted(zip(*np.nonzero(ious >= iou)), key=lambda dg: -ious[dg[0], dg[1]])
    if gt_labels is not None and labels is not None:
        gl, dl = np.asarray(gt_labels)[scored], np.asarray(labels)
        same = [(d, g) for d, g in candidates if dl[d] == gl[g]]
        candidates = same + [(d, g) for d, g in candidates if dl[d] != gl[g]]
    pairs, used_d, used_g = [], set(), set()
    for d, g in candidates:
        if d not in used_d and g not in used_g:
            used_d.add(d)
            used_g.add(g)
            pairs.append((int(scored[g]), int(d)))
    rest = [d for d in range(len(boxes)) if d not in used_d]
    if len(ignored) and rest:
        cover = _box_iou(boxes[rest], gt_boxes[ignored], crowd=np.ones(len(ignored)))
        rest = [d for d, c in zip(rest, cover.max(axis=1)) if c < iou]
    unpaired_gt = [int(scored[g]) for g in range(len(scored)) if g not in used_g]
    return sorted(pairs), unpaired_gt, rest


def analyse(records: Sequence[Record], detections: list[dict], class_map, result: dict, ev,
            score_threshold: float | str = "auto") -> Analysis:
    """Analyse an evaluation (:func:`fpn_lab.metrics.coco.score_detections`' ``result`` and ``ev``).

    Args:
        records: the evaluated records (ground truth in original pixels).
        detections: the COCO results list that was evaluated (``predictions.json``: source image
            and category ids, xywh, score).
        class_map: the dataset's :class:`~fpn_lab.core.class_map.ClassMap` (or class names).
        score_threshold: for the confusion matrix and the per-image errors: a score in ``[0, 1]``,
            or ``"auto"``: the threshold with the best mean F1 (0.5 when there is no detection to
            choose from, or no threshold keeps a true positive so that every F1 is 0; said in the
            returned ``best_threshold`` being nan, with ``best_mean_f1`` nan or 0).

    Raises:
        ParamsError: ``score_threshold`` is neither ``"auto"`` nor a score in ``[0, 1]``.
    """
    score_threshold = check_threshold(score_threshold)
    class_map = as_class_map(class_map)
    names = class_map.names
    k_count = len(names)
    gt_counts = np.bincount([int(lab) for r in records for lab, ig in zip(r.labels, r.iscrowd | r.difficult) if not ig],
                            minlength=k_count)
    out = Analysis(class_names=list(names), score_threshold=math.nan, by_size=_size_section(result, records, ev),
                   gt_counts=gt_counts)
    if ev is not None:
        out.precision, out.recall, out.f1, out.pr_recall, out.pr_precision, _ = _curves(ev, class_map, k_count)
        has_gt = gt_counts > 0
        mean_f1 = np.nan_to_num(out.f1[has_gt]).mean(axis=0)
        j = int(np.argmax(mean_f1))
        out.best_mean_f1 = float(mean_f1[j])
        # every F1 is 0 when no threshold keeps a true positive: no threshold is better than another
        out.best_threshold = float(SCORE_THRESHOLDS[j]) if out.best_mean_f1 > 0 else math.nan
    thr = (0.5 if math.isnan(out.best_threshold) else out.best_threshold) if score_threshold == "auto" else score_threshold
    out.score_threshold = float(thr)
    label_of = {cid: k for k, cid in enumerate(class_map.category_ids)}
    by_image: dict = {}
    for d in detections:
        by_image.setdefault(d["image_id"], []).append(d)
    cm = np.zeros((k_count + 1, k_count + 1), np.int64)
    for i, r in enumerate(records):
        dets = [d for d in by_image.get(r.image_id, []) if d["score"] >= thr]
        xywh = np.array([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
        boxes = np.column_stack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]).astype(np.float32)
        labels = np.array([label_of[d["category_id"]] for d in dets], np.int64)
        scores = np.array([d["score"] for d in dets], np.float32)
        ignore = r.iscrowd | r.difficult
        pairs, fn, fp = match_image(r.boxes, ignore, boxes, gt_labels=r.labels, labels=labels)
        e = ImageErrors(index=i, image_id=r.image_id, gt_boxes=r.boxes, gt_labels=r.labels, boxes=boxes, labels=labels,
                        scores=scores, fp=fp, fn=fn)
        for g, d in pairs:
            cm[int(r.labels[g]), labels[d]] += 1
            (e.tp if int(r.labels[g]) == labels[d] else e.wrong_class).append((g, d))
        for g in fn:
            cm[int(r.labels[g]), k_count] += 1
        for d in fp:
            cm[k_count, labels[d]] += 1
        out.images.append(e)
    out.confusion = cm
    return out
