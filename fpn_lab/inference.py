"""Prediction and evaluation: batched prediction in original-image pixels (datasets, files, arrays) and
the COCO evaluation of a model on a dataset."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from fpn_lab.data.images import load_image
from fpn_lab.data.transforms import Geometry, Letterbox, check_image_array
from fpn_lab.errors import DataError
from fpn_lab.metrics.coco import detections_to_coco

log = logging.getLogger("fpn_lab.inference")


@torch.no_grad()
def predict_batches(model, batches: Iterable[tuple[torch.Tensor, Sequence[Geometry]]]) -> list[dict]:
    """Predict ``(uint8[B, 3, S, S] images, geometries)`` batches in eval mode (the model's mode is
    restored afterwards); ``model`` is an :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel` or an
    :class:`~fpn_lab.export.OnnxDetector`.

    Returns one dict per image: ``boxes`` ``float32[M, 4]`` xyxy in the original image's pixels
    (the exact inverse of each image's letterbox), ``scores`` ``float32[M]``, ``labels``
    ``int64[M]``, sorted by score. Thresholds are the preset's test config (``score_thr``).
    """
    module = isinstance(model, torch.nn.Module)  # else an fpn_lab.export.OnnxDetector (onnxruntime, CPU)
    was_training = model.training if module else False
    if module:
        model.eval()
    device = next(model.parameters()).device if module else torch.device("cpu")
    out = []
    try:
        for images, geometries in batches:
            for pred, g in zip(model.predict(images.to(device), list(geometries)), geometries):
                order = torch.argsort(pred["scores"], descending=True)
                out.append({"boxes": g.to_original(pred["boxes"][order].cpu().numpy()),
                            "scores": pred["scores"][order].cpu().numpy(),
                            "labels": pred["labels"][order].cpu().numpy()})
    finally:
        if module:
            model.train(was_training)
    return out


def letterboxed_for(model, dataset):
    """``dataset`` as ``model`` is fed: letterboxed to the model's ``image_size`` and
    ``pad_position`` where it has them (an :class:`~fpn_lab.export.OnnxDetector`; else the
    dataset's own size and position), filled with ``model.pad_value``, a training dataset's
    augmentation left out. Returns ``dataset`` itself
    when it already is; otherwise a :class:`~fpn_lab.data.dataloaders.Dataset` over the same
    records sharing the decoded-image cache. Every path that predicts on a dataset goes through it,
    so a dataset letterboxed with another fill (IceVision's ``Adapter`` defaults to 114 grey, while
    VFNet and RetinaNet pad with the ImageNet mean) is never predicted on as it is."""
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import Augment, Letterbox

    box = dataset.tfms.letterbox if isinstance(dataset.tfms, Augment) else dataset.tfms
    size = int(getattr(model, "image_size", None) or box.size)  # an exported model's input side is fixed
    position = getattr(model, "pad_position", None) or box.position
    if not isinstance(dataset.tfms, Augment) and (box.size, box.position, box.pad_value) == \
            (size, position, tuple(model.pad_value)):
        return dataset
    with warnings.catch_warnings():  # the dataset already said which boxes are too small; a view says it once
        if size == box.size:
            warnings.simplefilter("ignore")
        view = Dataset(dataset.records, Letterbox(size, model.pad_value, position), cache_images=dataset.cache_images)
    view._cache = dataset._cache
    return view


def predict_dataset(model, dataset, batch_size: int = 8, indices: Sequence[int] | None = None) -> list[dict]:
    """Predictions for every record of ``dataset`` (or those at ``indices``), letterboxed as the
    model is fed (:func:`letterboxed_for`), in original-image pixels (one dict per record, same
    order; see :func:`predict_batches`)."""
    from fpn_lab.data.dataloaders import collate

    dataset = letterboxed_for(model, dataset)
    indices = list(range(len(dataset))) if indices is None else list(indices)

    def batches():
        for start in range(0, len(indices), batch_size):
            images, targets = collate([dataset[i] for i in indices[start:start + batch_size]])
            yield images, [t["geometry"] for t in targets]

    return predict_batches(model, batches())


def image_losses(model, dataset, indices: Sequence[int] | None = None) -> dict[int, tuple[dict, dict]]:
    """Each image's losses and prediction, from one forward pass of that image alone with every
    norm layer in eval mode (so they do not depend on which images share a batch).

    Args:
        dataset: a validation-transform (letterboxed) dataset.
        indices: the images to score (default: all).

    Returns:
        ``{index: (losses, prediction)}``: ``losses`` is ``{"loss_total": float, <mmdet's loss
        terms, e.g. loss_cls, loss_bbox, loss_obj>: float}``; ``prediction`` is ``{"boxes":
        float32[M, 4] xyxy in original pixels, "scores": float32[M], "labels": int64[M]}``.
    """
    from fpn_lab.data.dataloaders import collate

    dataset = letterboxed_for(model, dataset)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {}
    try:
        with torch.no_grad():
            for i in range(len(dataset)) if indices is None else indices:
                images, targets = collate([dataset[i]])
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                res = model(images.to(device), targets)
                losses = {"loss_total": float(res["loss"]), **{k: float(v) for k, v in res.items()
                                                              if k.startswith("loss") and k != "loss"}}
                p = res["predictions"][0] if res.get("predictions") else None
                pred = {"boxes": targets[0]["geometry"].to_original(p["boxes"].cpu().numpy()) if p else
                        np.zeros((0, 4), np.float32),
                        "scores": p["scores"].cpu().numpy() if p else np.zeros(0, np.float32),
                        "labels": p["labels"].cpu().numpy() if p else np.zeros(0, np.int64)}
                out[i] = (losses, pred)
    finally:
        model.train(was_training)
    return out


def evaluate(model, dataset, class_map, batch_size: int = 8, *, cocoeval: bool = False):
    """COCO evaluation of ``model`` on ``dataset``: fpn_lab's one evaluation entry point (the
    notebook's ``run.evaluate`` calls it and writes the files; the per-epoch metric scores the
    same detections the same way).

    The model predicts every image letterboxed as it was trained (:func:`letterboxed_for`), boxes
    are mapped back to original-image pixels and scored with
    :func:`~fpn_lab.metrics.coco.score_detections`.

    Args:
        class_map: the dataset's :class:`~fpn_lab.core.class_map.ClassMap` (its category ids go
            into the results), or class names (ids ``label + 1``).
        cocoeval: also return pycocotools' evaluated ``COCOeval``.

    Returns:
        ``(result, detections)``: the :func:`~fpn_lab.metrics.coco.score_detections` result dict
        and the COCO results list (the source's image and category ids: ``predictions.json``);
        with ``cocoeval``, ``(result, detections, ev)``, ``ev`` being ``None`` when there was
        nothing to evaluate (:func:`fpn_lab.metrics.analysis.analyse` reads it).

    Across processes (torchrun, :mod:`fpn_lab.distributed`) each process predicts every
    ``world_size``-th image, the predictions are gathered by image into the records' order, rank 0
    evaluates and broadcasts ``result``; ``detections`` are the same in every process, ``ev`` is
    rank 0's (``None`` in the others).

    Raises:
        ModelError: the model predicts another number of classes than ``class_map`` holds.
    """
    from fpn_lab.metrics.coco import score_detections
    from fpn_lab.models.build import check_num_classes

    from fpn_lab import distributed

    check_num_classes(model, class_map, "evaluate")
    ctx = distributed.context()
    if ctx.distributed:
        share = distributed.shard_indices(len(dataset), ctx.rank, ctx.world_size, empty_ok=True)
        gathered = distributed.gather_by_key(dict(zip(share, predict_dataset(model, dataset, batch_size, share))))
        preds = [gathered[i] for i in range(len(dataset))]
    else:
        preds = predict_dataset(model, dataset, batch_size)
    detections = [d for rec, p in zip(dataset.records, preds)
                  for d in detections_to_coco(rec.image_id, p["boxes"], p["scores"], p["labels"], class_map)]
    result, ev = score_detections(dataset.records, detections, class_map) if ctx.is_main else (None, None)
    result = distributed.broadcast(result)
    return (result, detections, ev) if cocoeval else (result, detections)


ON_ERROR = ("raise", "skip")


def predict_images(model, images: Sequence[np.ndarray | str | Path], *, image_size: int, batch_size: int = 8,
                   pad_position: str = "top_left", on_error: str = "raise") -> list[dict]:
    """Detect objects in images: arrays ``uint8[H, W, 3]`` RGB, or paths decoded with
    :func:`~fpn_lab.data.images.load_image` (EXIF orientation applied, every pixel decoded).

    Any image size works; a side that would letterbox to 0 px becomes 1 px (:class:`Letterbox`).

    Args:
        image_size: network input side in pixels (multiple of 32), as trained.
        batch_size: images per forward pass.
        on_error: what one unusable image (missing, truncated or corrupt file; an array that is not
            ``uint8[H, W, 3]``) does. ``"raise"`` (default): a :class:`DataError` naming each bad
            image of its batch (position, path and size in bytes, or array shape and dtype) and
            why, raised when that batch is reached. ``"skip"``: the other images are predicted as
            usual; the bad one gets an empty prediction with an ``error`` string (``boxes``
            ``float32[0, 4]``, ``scores`` ``float32[0]``, ``labels`` ``int64[0]``) and a warning
            on the ``fpn_lab.inference`` logger.

    Returns:
        One dict per input, in order: :func:`predict_batches`' ``boxes`` (xyxy in the original
        image's pixels), ``scores``, ``labels``; plus ``error`` only for an image skipped with
        ``on_error="skip"``.

    Raises:
        DataError: a bad image with ``on_error="raise"``, or an ``on_error`` other than "raise"/"skip".
    """
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be 'raise' or 'skip'; got {on_error!r}. 'skip' returns an empty "
                        "prediction with an 'error' key for each image that cannot be used.")
    letterbox = Letterbox(image_size, model.pad_value, pad_position)
    out: list[dict | None] = [None] * len(images)
    predicted: list[int] = []  # input positions, in the order predict_batches returns them

    def batches():
        for start in range(0, len(images), batch_size):
            boxed, errors = {}, {}
            for i in range(start, min(start + batch_size, len(images))):
                try:
                    boxed[i] = letterbox(_decode(images[i], i))
                except DataError as e:
                    errors[i] = str(e)
            if errors and on_error == "raise":
                raise DataError(f"predict_images: {' | '.join(e.rstrip('.') for e in errors.values())}. Pass on_error='skip' to predict the "
                                "other images and get an empty prediction with an 'error' key for each bad one.")
            for i, message in errors.items():
                log.warning("predict_images skipped %s", message)
                out[i] = _empty_prediction(message)
            if boxed:
                predicted.extend(boxed)
                yield (torch.from_numpy(np.stack([b[0] for b in boxed.values()])).permute(0, 3, 1, 2).contiguous(),
                       [b[2] for b in boxed.values()])

    preds = predict_batches(model, batches())  # runs the generator to its end: `predicted` is complete
    for i, pred in zip(predicted, preds, strict=True):
        out[i] = pred
    return out


def _decode(image, i: int) -> np.ndarray:
    """Input ``i`` of :func:`predict_images` as ``uint8[H, W, 3]``; DataError naming it otherwise."""
    if isinstance(image, (str, Path)):
        try:
            return load_image(image)
        except DataError as e:
            raise DataError(f"image #{i}: {e}") from None
    check_image_array(image, f"image #{i}")
    return image


def _empty_prediction(error: str) -> dict:
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.int64), "error": error}
