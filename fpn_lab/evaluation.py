"""Evaluate a model on a dataset: predictions in original pixels, COCO stats, COCO results list."""

from __future__ import annotations

from fpn_lab.data.dataloaders import collate
from fpn_lab.inference import predict_batches
from fpn_lab.metrics.coco import coco_evaluate, detections_to_coco
from fpn_lab.models.build import check_num_classes


def predict_dataset(model, dataset, batch_size: int = 8) -> list[dict]:
    """Predictions for every record of a validation-transform ``dataset``, in original-image pixels
    (one dict per record, same order; see :func:`~fpn_lab.inference.predict_batches`)."""

    def batches():
        for start in range(0, len(dataset), batch_size):
            images, targets = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            yield images, [t["geometry"] for t in targets]

    return predict_batches(model, batches())


def evaluate(model, dataset, class_map, batch_size: int = 8) -> tuple[dict, list[dict]]:
    """COCO evaluation of ``model`` on ``dataset``.

    Args:
        class_map: the dataset's :class:`~fpn_lab.core.class_map.ClassMap` (its category ids go
            into the results), or class names (ids ``label + 1``).

    Returns:
        ``(coco_evaluate result, COCO results list)``: the list uses the source's image and
        category ids (``predictions.json``).

    Raises:
        ModelError: the model predicts another number of classes than ``class_map`` holds.
    """
    check_num_classes(model, class_map, "evaluate")
    preds = predict_dataset(model, dataset, batch_size)
    detections = [d for rec, p in zip(dataset.records, preds)
                  for d in detections_to_coco(rec.image_id, p["boxes"], p["scores"], p["labels"], class_map)]
    return coco_evaluate(dataset.records, detections, class_map), detections


def history(learn) -> list[dict]:
    """Per-epoch values from a fastai ``Recorder`` as dicts (``epoch``, ``train_loss``, ``valid_loss``, ``AP``, ``AP50``)."""
    names = list(learn.recorder.metric_names[1:-1])
    return [{"epoch": i + 1, **{n: (float(v) if v is not None else None) for n, v in zip(names, row)}}
            for i, row in enumerate(learn.recorder.values)]
