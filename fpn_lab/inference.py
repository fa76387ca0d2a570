"""Batched prediction in original-image pixel coordinates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from fpn_lab.data.images import load_image
from fpn_lab.data.transforms import Geometry, Letterbox


@torch.no_grad()
def predict_batches(model, batches: Iterable[tuple[torch.Tensor, Sequence[Geometry]]]) -> list[dict]:
    """Predict ``(uint8[B, 3, S, S] images, geometries)`` batches in eval mode (the model's mode is
    restored afterwards).

    Returns one dict per image: ``boxes`` ``float32[M, 4]`` xyxy in the original image's pixels
    (the exact inverse of each image's letterbox), ``scores`` ``float32[M]``, ``labels``
    ``int64[M]``, sorted by score. Thresholds are the preset's test config (``score_thr``).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for images, geometries in batches:
            for pred, g in zip(model.predict(images.to(device), list(geometries)), geometries):
                order = torch.argsort(pred["scores"], descending=True)
                out.append({"boxes": g.to_original(pred["boxes"][order].cpu().numpy()),
                            "scores": pred["scores"][order].cpu().numpy(),
                            "labels": pred["labels"][order].cpu().numpy()})
    finally:
        model.train(was_training)
    return out


def predict_images(model, images: Sequence[np.ndarray | str | Path], *, image_size: int, batch_size: int = 8,
                   pad_position: str = "top_left") -> list[dict]:
    """Detect objects in images (arrays ``uint8[H, W, 3]`` RGB, or paths decoded with
    :func:`~fpn_lab.data.images.load_image`); returns :func:`predict_batches`' dicts."""
    letterbox = Letterbox(image_size, model.preset.pad_value, pad_position)

    def batches():
        for start in range(0, len(images), batch_size):
            chunk = [load_image(x) if isinstance(x, (str, Path)) else x for x in images[start:start + batch_size]]
            boxed = [letterbox(img) for img in chunk]
            yield (torch.from_numpy(np.stack([b[0] for b in boxed])).permute(0, 3, 1, 2).contiguous(),
                   [b[2] for b in boxed])

    return predict_batches(model, batches())
