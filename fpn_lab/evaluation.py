"""Evaluate a model on a dataset: predictions in original pixels, COCO stats, COCO results list."""

from __future__ import annotations

from fpn_lab.data.dataloaders import collate
from fpn_lab.inference import predict_batches
from fpn_lab.metrics.coco import coco_evaluate, detections_to_coco


def predict_dataset(model, dataset, batch_size: int = 8) -> list[dict]:
    """Predictions for every record of a validation-transform ``dataset``, in original-image pixels
    (one dict per record, same order; see :func:`~fpn_lab.inference.predict_batches`)."""

    def batches():
        for start in range(0, len(dataset), batch_size):
            images, targets = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            yield images, [t["geometry"] for t in targets]

    return predict_batches(model, batches())


def evaluate(model, dataset, class_names, batch_size: int = 8) -> tuple[dict, list[dict]]:
    """COCO evaluation of ``model`` on ``dataset``; returns ``(coco_evaluate result, COCO results list)``."""
    preds = predict_dataset(model, dataset, batch_size)
    detections = [d for rec, p in zip(dataset.records, preds)
                  for d in detections_to_coco(rec.record_id, p["boxes"], p["scores"], p["labels"])]
    return coco_evaluate(dataset.records, detections, list(class_names)), detections


def history(learn) -> list[dict]:
    """Per-epoch values from a fastai ``Recorder`` as dicts (``epoch``, ``train_loss``, ``valid_loss``, ``AP``, ``AP50``)."""
    names = list(learn.recorder.metric_names[1:-1])
    return [{"epoch": i + 1, **{n: (float(v) if v is not None else None) for n, v in zip(names, row)}}
            for i, row in enumerate(learn.recorder.values)]
