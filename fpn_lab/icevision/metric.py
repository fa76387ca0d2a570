"""IceVision's ``COCOMetric(metric_type=COCOMetricType.bbox)``: COCO AP columns for the learner."""

from __future__ import annotations

from enum import Enum

from fpn_lab.errors import ParamsError
from fpn_lab.metrics.coco import COCO_STAT_NAMES


class COCOMetricType(Enum):
    """IceVision's metric types; fpn_lab evaluates boxes only."""

    bbox = "bbox"
    mask = "segm"
    keypoint = "keypoints"


class COCOMetric:
    """COCO evaluation (pycocotools) of every validation pass, as learner columns.

    Handed to ``model_type.fastai.learner(..., metrics=[COCOMetric()])`` it becomes one column per
    key (default ``AP`` = AP@[.5:.95] and ``AP50``), all from one evaluation per epoch
    (:func:`fpn_lab.learner.coco_metric.coco_metrics`). IceVision showed a single ``COCOMetric``
    column holding AP@[.5:.95].

    Args:
        metric_type: ``COCOMetricType.bbox`` (masks and keypoints are not supported).
        print_summary: accepted for IceVision's signature; the summary is in ``learn.coco.result``.
        keys: the COCO statistics to show (``AP``, ``AP50``, ``AP75``, ``AP_small``...; see
            :func:`fpn_lab.metrics.coco.score_detections`).

    Raises:
        ParamsError: a mask or keypoint metric, or an unknown key.
    """

    def __init__(self, metric_type: COCOMetricType = COCOMetricType.bbox, print_summary: bool = False,
                 show_pbar: bool = False, keys=("AP", "AP50")):
        if metric_type is not COCOMetricType.bbox:
            raise ParamsError(f"COCOMetric({metric_type}): fpn_lab detects boxes only (no masks or keypoints); use "
                              "COCOMetricType.bbox.")
        bad = [k for k in keys if k not in COCO_STAT_NAMES]
        if bad or not keys:
            raise ParamsError(f"COCOMetric keys {list(keys)}: unknown {bad or 'empty list'}; choose from "
                              f"{list(COCO_STAT_NAMES)}.")
        self.metric_type, self.print_summary, self.keys = metric_type, print_summary, tuple(keys)

    def __repr__(self) -> str:
        return f"COCOMetric(keys={list(self.keys)})"
