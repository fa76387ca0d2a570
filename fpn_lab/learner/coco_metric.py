"""COCO AP@[.5:.95] and AP50 as fastai metric columns (:class:`COCOStat`), computed once per validation pass.

IceVision's ``COCOMetric`` (:mod:`fpn_lab.icevision.metric`) asks the learner for these columns."""

from __future__ import annotations

import math

from fastai.learner import Metric

from fpn_lab.metrics.coco import detections_to_coco, score_detections


class COCOAccumulator:
    """Collects validation detections (mapped to original-image pixels) and evaluates them once.

    Ground truth is the records of the loader being validated (``learn.dl``: ``learn.dls.valid``,
    or the training loader for ``learn.validate(ds_idx=0)``). After a validation pass,
    :attr:`detections` holds the COCO results list (in the records' order) and :attr:`result`
    the full :func:`~fpn_lab.metrics.coco.score_detections` dict. Across processes each one holds
    its share's detections until :meth:`compute` gathers them by image (an image padded into two
    shares counted once), evaluates on rank 0 and broadcasts the result
    (:mod:`fpn_lab.distributed`), so the metric equals one process's.
    """

    def __init__(self):
        self.by_record: dict = {}  # record_id -> its image's COCO results
        self.detections: list[dict] = []
        self.result: dict | None = None
        self.learn = None

    def reset(self):
        self.by_record, self.detections, self.result, self.dataset = {}, [], None, None

    def accumulate(self, learn):
        self.learn = learn
        # the loader being validated (learn.validate(ds_idx=0) validates the training set): its
        # records are the ground truth, never learn.dls.valid's by default
        self.dataset = learn.dl.dataset
        preds = learn.pred.get("predictions") if isinstance(learn.pred, dict) else None
        if preds is None:
            return
        for p, t in zip(preds, learn.yb[0]):
            boxes = t["geometry"].to_original(p["boxes"].cpu().numpy())
            self.by_record[t["record_id"]] = detections_to_coco(t["image_id"], boxes, p["scores"].cpu().numpy(),
                                                              p["labels"].cpu().numpy(), learn.class_map)

    def compute(self) -> dict:
        """Score the pass's detections (once; later calls return the same dict)."""
        from fpn_lab import distributed

        if self.result is None:
            records = (self.dataset or self.learn.dls.valid.dataset).records
            by_record = distributed.gather_by_key(self.by_record) if distributed.initialized() else self.by_record
            self.detections = [d for r in records for d in by_record.get(r.record_id, ())]
            result = (score_detections(records, self.detections, self.learn.class_map)[0]
                      if distributed.is_main() else None)
            self.result = distributed.broadcast(result)
        return self.result


class COCOStat(Metric):
    """One COCO statistic (``"AP"``, ``"AP50"``, ...) as a fastai metric column.

    Several :class:`COCOStat` objects share one :class:`COCOAccumulator`; only the first
    (``primary=True``) collects detections, so the COCO evaluation runs once per epoch.
    """

    def __init__(self, key: str, acc: COCOAccumulator, primary: bool):
        self.key, self.acc, self.primary = key, acc, primary

    def reset(self):
        if self.primary:
            self.acc.reset()

    def accumulate(self, learn):
        if self.primary:
            self.acc.accumulate(learn)

    @property
    def value(self):
        if self.acc.learn is None:
            return math.nan
        return self.acc.compute()[self.key]

    @property
    def name(self):
        return self.key


def coco_metrics(keys=("AP", "AP50")) -> list[COCOStat]:
    """fastai metrics for the given COCO stats, sharing one accumulator (``metrics[0].acc``)."""
    acc = COCOAccumulator()
    return [COCOStat(k, acc, primary=(i == 0)) for i, k in enumerate(keys)]
