"""Drawings of a :class:`~fpn_lab.metrics.analysis.Analysis`: the confusion matrix, the curves per
class, and the worst images. Each returns its matplotlib ``Figure``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from fpn_lab.viz.draw import COLORS


def plot_confusion_matrix(analysis, normalised: bool = True):
    """Counts and row-normalised shares side by side (rows: true class, columns: predicted; the
    last row and column are background), at IoU 0.5 and ``analysis.score_threshold``."""
    names = [*analysis.class_names, "background"]
    fig, axes = plt.subplots(1, 2 if normalised else 1, figsize=(5.2 * (2 if normalised else 1) + 0.6, 4.4))
    axes = np.atleast_1d(axes)
    panels = [(analysis.confusion, "counts", "d")] + ([(analysis.confusion_normalised, "row-normalised", ".2f")]
                                                       if normalised else [])
    for ax, (m, title, fmt) in zip(axes, panels):
        shown = np.nan_to_num(m.astype(np.float64))
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=max(1.0, shown[:-1].max() if fmt == "d" else 1.0))
        for (i, j), v in np.ndenumerate(m):
            if i == len(names) - 1 and j == len(names) - 1:
                continue  # background -> background is not defined
            text = "" if isinstance(v, float) and np.isnan(v) else format(v, fmt)
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > 0.6 * (shown.max() or 1) else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set(xlabel="predicted", ylabel="true", title=f"{title}: IoU 0.5, score >= {analysis.score_threshold:.2f}")
    fig.tight_layout()
    return fig


def plot_curves(analysis):
    """Per class: precision-recall at IoU 0.5 (COCO's interpolated curve, AP50 in the legend), and
    precision, recall and F1 against the score threshold, with the suggested threshold marked."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    if analysis.f1 is None:
        for ax in axes:
            ax.text(0.5, 0.5, "no detections: no curves", ha="center", va="center")
            ax.axis("off")
        return fig
    for k, name in enumerate(analysis.class_names):
        c = COLORS[k % len(COLORS)]
        pr = analysis.pr_precision[k]
        if not np.isnan(pr).all():
            axes[0].plot(analysis.pr_recall, pr, color=c, label=f"{name} (AP50 {np.nanmean(pr):.3f})")
        for ax, key in zip(axes[1:], ("precision", "recall", "f1")):
            ax.plot(analysis.thresholds, getattr(analysis, key)[k], color=c, label=name)
    mean_f1 = np.nanmean(np.nan_to_num(analysis.f1[analysis.gt_counts > 0]), axis=0)
    axes[3].plot(analysis.thresholds, mean_f1, color="black", linewidth=2.2, label="mean over classes")
    axes[0].set(xlabel="recall", ylabel="precision", title="precision-recall, IoU 0.5", xlim=(0, 1), ylim=(0, 1.02))
    for ax, title in zip(axes[1:], ("precision", "recall", "F1")):
        ax.set(xlabel="score threshold", ylabel=title, title=f"{title} against the score threshold", xlim=(0, 1),
               ylim=(0, 1.02))
        if not np.isnan(analysis.best_threshold):
            ax.axvline(analysis.best_threshold, color="grey", linestyle="--", linewidth=1)
    if not np.isnan(analysis.best_threshold):
        axes[3].annotate(f"best mean F1 {analysis.best_mean_f1:.3f}\nat {analysis.best_threshold:.2f}",
                         (analysis.best_threshold, analysis.best_mean_f1), xytext=(8, -28), textcoords="offset points",
                         fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def show_worst_images(analysis, dataset, n: int = 4, ncols: int = 2, model=None):
    """The ``n`` validation images with the most false positives plus misses
    (:meth:`~fpn_lab.metrics.analysis.Analysis.worst`), in original pixels: true positives green,
    detections of the wrong class orange, false positives red, misses as dashed magenta boxes,
    other ground truth (crowd / difficult) thin grey. With ``model``, each title also gives the
    image's loss (:func:`fpn_lab.inference.image_losses`: one forward pass per drawn image;
    ``dataset`` is then the letterboxed validation dataset the analysis came from)."""
    worst = analysis.worst(n)
    losses = {}
    if model is not None and worst:
        from fpn_lab.inference import image_losses

        losses = {i: v[0]["loss_total"] for i, v in image_losses(model, dataset, [e.index for e in worst]).items()}
    if not worst:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, f"no errors at score >= {analysis.score_threshold:.2f}", ha="center", va="center")
        ax.axis("off")
        return fig
    nrows = -(-len(worst) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 4.6 * nrows), squeeze=False)
    names = analysis.class_names

    def box(ax, b, color, style="-", width=1.6, text=None):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=color, linestyle=style,
                               linewidth=width))
        if text:
            ax.text(b[0], b[1] - 2, text, color="white", fontsize=6, bbox={"facecolor": color, "pad": 1, "alpha": 0.8})

    for ax, e in zip(axes.flat, worst):
        ax.imshow(dataset.image(e.index) if hasattr(dataset, "image") else dataset[e.index]["image"])
        paired_gt = {g for g, _ in e.tp + e.wrong_class}
        for g, b in enumerate(e.gt_boxes):
            if g not in paired_gt and g not in e.fn:
                box(ax, b, "lightgrey", width=0.8)
        for g, d in e.tp:
            box(ax, e.boxes[d], "tab:green", text=f"{names[e.labels[d]]} {e.scores[d]:.2f}")
        for g, d in e.wrong_class:
            box(ax, e.boxes[d], "tab:orange", text=f"{names[e.labels[d]]}? is {names[e.gt_labels[g]]}")
        for d in e.fp:
            box(ax, e.boxes[d], "tab:red", text=f"{names[e.labels[d]]} {e.scores[d]:.2f}")
        for g in e.fn:
            box(ax, e.gt_boxes[g], "magenta", style="--", width=1.8, text=f"missed {names[e.gt_labels[g]]}")
        loss = f", loss {losses[e.index]:.3f}" if e.index in losses else ""
        ax.set_title(f"image {e.image_id}: {e.n_fp} false, {e.n_fn} missed, {len(e.tp)} right{loss}", fontsize=9)
        ax.axis("off")
    for ax in list(axes.flat)[len(worst):]:
        ax.axis("off")
    fig.suptitle(f"Worst validation images at IoU 0.5, score >= {analysis.score_threshold:.2f}: green right, "
                 "orange wrong class, red false, dashed magenta missed", fontsize=10)
    fig.tight_layout()
    return fig
