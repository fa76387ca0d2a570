"""Matplotlib drawings of images with boxes (ground truth and predictions).

All functions take boxes as ``float[N, 4]`` xyxy in the pixel coordinates of the image drawn, and
return the matplotlib ``Figure`` (so notebooks display it and scripts can save it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from fpn_lab.errors import ModelError

COLORS = plt.get_cmap("tab10").colors


def draw_boxes(ax, image: np.ndarray, boxes, labels, class_names: Sequence[str], scores=None, title: str = "") -> None:
    """Draw ``uint8[H, W, 3]`` RGB ``image`` with boxes, class names and optional scores on ``ax``.

    Raises:
        ModelError: a label has no name in ``class_names`` (a model built for another class count).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ModelError(f"label {int(labels.max() if labels.max() >= len(class_names) else labels.min())} has no "
                         f"class name: the class map has {len(class_names)} classes ({', '.join(map(str, class_names))}); "
                         "the predictions come from a model built for another class count.")
    ax.imshow(image)
    for k, (b, lab) in enumerate(zip(boxes, labels)):
        color = COLORS[int(lab) % len(COLORS)]
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=color, linewidth=1.5))
        text = class_names[int(lab)] + (f" {float(scores[k]):.2f}" if scores is not None else "")
        ax.text(b[0], b[1], text, fontsize=7, color="white", va="bottom",
                bbox=dict(facecolor=color, alpha=0.7, pad=1, edgecolor="none"))
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _grid(n: int, ncols: int, size: float = 3.2):
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def show_samples(samples, class_names: Sequence[str] | None = None, n: int = 6, ncols: int = 3, seed: int = 0,
                 class_map=None):
    """Draw transformed samples with their boxes (as the model receives them: letterboxed).

    Args:
        samples: a :class:`~fpn_lab.data.dataloaders.Dataset` (``n`` random items, chosen with
            ``seed``), or a list of its items (IceVision's ``show_samples([train_ds[0] for _ in
            range(3)], ncols=3)``: each call of a training dataset's item draws a new augmentation).
        class_names: names per label, or a :class:`~fpn_lab.core.class_map.ClassMap`; default the
            class map the parser attached to the records.
        class_map: IceVision's keyword for the same (give one of the two).
    """
    from fpn_lab.data.dataloaders import Dataset

    if class_map is not None and class_names is not None:
        raise ModelError("show_samples: give class_names or class_map (IceVision's name for it), not both.")
    names = class_names if class_map is None else class_map
    class_names = getattr(names, "names", names)  # a ClassMap or a list of names

    if isinstance(samples, Dataset):
        idx = np.random.default_rng(seed).choice(len(samples), size=min(n, len(samples)), replace=False)
        items = [(samples[int(i)], samples.records[int(i)].filepath.name) for i in idx]
    else:
        items = [(s, "") for s in samples]
    fig, axes = _grid(len(items), ncols)
    for ax, ((img, t), title) in zip(axes, items):
        labels = t["labels"].cpu().numpy()
        names = class_names or _class_names(t, labels)
        draw_boxes(ax, img, t["boxes"].cpu().numpy(), labels, names,
                   title=title or f"{img.shape[1]}x{img.shape[0]} input")
    fig.tight_layout()
    return fig


def _class_names(target: dict, labels) -> list[str]:
    """The class names of a sample's class map, or ``"label k"`` when it has none."""
    cmap = target.get("class_map")
    if cmap is not None:
        return list(cmap.names)
    return [f"label {i}" for i in range(int(labels.max()) + 1 if len(labels) else 1)]


def show_batch(batch, class_names: Sequence[str] | None = None, n: int = 6, ncols: int = 3):
    """Draw the first ``n`` images of a batch as the model receives them (letterboxed).

    Args:
        batch: ``(uint8[B, 3, S, S] images, targets)`` (IceVision's ``first(valid_dl)``), or fastai
            ``DataLoaders`` (one training batch is drawn).
        class_names: names per label; default the class map the parser attached to the records.
    """
    images, targets = batch.train.one_batch() if hasattr(batch, "train") else batch
    return show_samples([(img.permute(1, 2, 0).cpu().numpy(), t) for img, t in zip(images[:n], targets[:n])],
                        class_names, ncols=ncols)


def show_results(images: Sequence[np.ndarray], records, predictions: Sequence[dict], class_names: Sequence[str],
                 threshold: float = 0.4, titles: Sequence[str] = ()):
    """Ground truth (left) beside predictions scoring >= ``threshold`` (right), in original pixels;
    ``titles`` replace the left panels' titles (default: file name)."""
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(8, 3.2 * n), squeeze=False)
    for row, (img, rec, pred) in enumerate(zip(images, records, predictions)):
        keep = pred["scores"] >= threshold
        draw_boxes(axes[row, 0], img, rec.boxes, rec.labels, class_names,
                   title=titles[row] if row < len(titles) else f"{rec.filepath.name}: ground truth")
        draw_boxes(axes[row, 1], img, pred["boxes"][keep], pred["labels"][keep], class_names, pred["scores"][keep],
                   title=f"predictions (score >= {threshold})")
    fig.tight_layout()
    return fig


def show_predictions(images: Sequence[np.ndarray], predictions: Sequence[dict], class_names: Sequence[str],
                     titles: Sequence[str] = (), threshold: float = 0.4, ncols: int = 2):
    """Predictions scoring >= ``threshold`` drawn on the original images."""
    fig, axes = _grid(len(images), ncols, size=4.0)
    for k, (ax, img, pred) in enumerate(zip(axes, images, predictions)):
        keep = pred["scores"] >= threshold
        draw_boxes(ax, img, pred["boxes"][keep], pred["labels"][keep], class_names, pred["scores"][keep],
                   title=titles[k] if k < len(titles) else "")
    fig.tight_layout()
    return fig


def plot_metrics(recorder, metric_names: Sequence[str] = ("AP", "AP50")):
    """Training / validation loss and COCO AP per epoch from a fastai ``Recorder``."""
    names = list(recorder.metric_names[1:-1])  # drop 'epoch' and 'time'
    values = np.array(recorder.values, dtype=np.float64).reshape(len(recorder.values), -1)
    epochs = np.arange(1, len(values) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for col, name in enumerate(names):
        target = ax2 if name in metric_names else ax1
        target.plot(epochs, values[:, col], marker="o", label=name)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="COCO AP", title="validation AP", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def show_fpn_features(model, dataset, index: int = 0, class_names: Sequence[str] = ()):
    """Draw the neck's outputs (P3..P7, or whatever levels it gives) for one image of ``dataset``.

    One panel per level: the per-pixel L2 norm over channels, all levels on one shared colour
    scale, titled with the level, its stride and spatial size. Beside them, the letterboxed input
    with its ground-truth boxes. Each box is also drawn on the level the model's own training
    assigner gives it (:func:`fpn_lab.mmdet_adapter.features.assigned_levels`), so one sees fine
    levels taking small objects and coarse levels large ones.
    """
    from fpn_lab.data.dataloaders import collate
    from fpn_lab.mmdet_adapter.features import assigned_levels, neck_features

    images, targets = collate([dataset[index]])
    was_training = model.training
    feats = neck_features(model, images, targets)
    levels = assigned_levels(model, images, targets)[0]
    model.train(was_training)
    norms = [f[0].float().norm(dim=0).cpu().numpy() for f in feats]
    vmax = max(float(n.max()) for n in norms)
    names = model.levels
    side = images.shape[-1]
    fig, axes = plt.subplots(1, len(feats) + 1, figsize=(3.0 * (len(feats) + 1), 3.4))
    t = targets[0]
    boxes, labels = t["boxes"].numpy(), t["labels"].numpy()
    draw_boxes(axes[0], images[0].permute(1, 2, 0).numpy(), boxes, labels, class_names or [str(i) for i in range(99)],
               title=f"input {side}x{side}")
    for k, (ax, n) in enumerate(zip(axes[1:], norms)):
        im = ax.imshow(n, cmap="viridis", vmin=0, vmax=vmax)
        stride = side / n.shape[1]
        for b, lab in zip(boxes[levels == k], labels[levels == k]):
            s = b / stride - 0.5
            ax.add_patch(Rectangle((s[0], s[1]), s[2] - s[0], s[3] - s[1], fill=False,
                                   edgecolor=COLORS[int(lab) % len(COLORS)], linewidth=1.2))
        ax.set_title(f"{names[k]}: stride {stride:g}, {n.shape[1]}x{n.shape[0]}\n{int((levels == k).sum())} boxes assigned",
                     fontsize=8)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes[1:]), shrink=0.7, label="L2 norm over channels")
    return fig
