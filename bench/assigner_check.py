"""Does the training assigner see every class at the demo's input size? Per class: box sizes and the
pyramid level (P3 stride 8, P4 16, P5 32) the model's own assigner gives each ground-truth box.

    .venv/bin/python bench/assigner_check.py runs/demo_seeds/no-aug-1/seed0/model.pth --sizes 320 384
    .venv/bin/python bench/assigner_check.py --untrained --sizes 320

For each size, every image of the BCCD split (``--split valid``: test, ``train``: trainval) is
letterboxed as validation does and passed through
:func:`fpn_lab.mmdet_adapter.features.assigned_levels` (YOLOX: SimOTA on the model's current
predictions, so a trained checkpoint gives the assignment training converged to; an untrained
model shows the assignment at the start). A box with no positive prior gets no training signal
in that step. Printed: per class the box count, median and 10th percentile of the box side
``sqrt(w * h)`` in network pixels, and the share of boxes per level and with no positive prior.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpn_lab.checkpoint import load_checkpoint  # noqa: E402
from fpn_lab.data.dataloaders import Dataset, collate  # noqa: E402
from fpn_lab.data.datasets import open_dataset  # noqa: E402
from fpn_lab.data.transforms import resize_and_pad  # noqa: E402
from fpn_lab.mmdet_adapter.features import assigned_levels  # noqa: E402
from fpn_lab.models.build import build_model  # noqa: E402


def level_shares(model, records, class_names, size: int, pad_value, batch: int = 8) -> dict:
    """Per class: ``{"boxes": n, "median_side": px, "p10_side": px, "levels": [share per level], "none": share}``
    (shares of the class's boxes; ``none``: no positive prior). Classes without boxes are left out."""
    ds = Dataset(records, resize_and_pad(size, pad_value))
    sides, levels = defaultdict(list), defaultdict(Counter)
    for start in range(0, len(ds), batch):
        images, targets = collate([ds[i] for i in range(start, min(len(ds), start + batch))])
        for t, lv in zip(targets, assigned_levels(model, images, targets)):
            b = t["boxes"].numpy().reshape(-1, 4)
            for label, side, level in zip(t["labels"].tolist(), np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])), lv):
                sides[label].append(float(side))
                levels[label][int(level)] += 1
    out = {}
    for label, name in enumerate(class_names):
        n = sum(levels[label].values())
        if n:
            out[name] = {"boxes": n, "median_side": float(np.median(sides[label])),
                         "p10_side": float(np.percentile(sides[label], 10)),
                         "levels": [levels[label][k] / n for k in range(len(model.levels))], "none": levels[label][-1] / n}
    return out


def check(model, records, class_names, size: int, pad_value, batch: int = 8) -> list[str]:
    """:func:`level_shares` as markdown table rows."""
    return [f"| {size} | {name} | {s['boxes']} | {s['median_side']:.1f} | {s['p10_side']:.1f} | "
            + " | ".join(f"{v:.0%}" for v in s["levels"]) + f" | {s['none']:.0%} |"
            for name, s in level_shares(model, records, class_names, size, pad_value, batch).items()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?", help="a trained fpn_lab model.pth (its preset and classes)")
    ap.add_argument("--untrained", action="store_true", help="a freshly initialised demo model instead")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320])
    ap.add_argument("--split", choices=["valid", "train"], default="valid")
    args = ap.parse_args()
    if bool(args.checkpoint) == args.untrained:
        ap.error("give a checkpoint or --untrained (one of them)")
    data = open_dataset(ROOT / "data" / "bccd", split="published", seed=0)
    records = data.valid if args.split == "valid" else data.train
    torch.manual_seed(0)
    if args.untrained:
        model, what = build_model("yolox_tiny_pafpn_300e", num_classes=len(data.class_map)), "untrained"
    else:
        model, _ = load_checkpoint(args.checkpoint, class_map=data.class_map)
        what = args.checkpoint
    model.eval()
    print(f"model: {what}; BCCD {args.split} split, {len(records)} images; levels {', '.join(model.levels)}\n")
    levels = " | ".join(model.levels)
    print(f"| size | class | boxes | median side px | 10th pct side px | {levels} | no positive prior |")
    print("| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in model.levels) + " | --- |")
    for size in args.sizes:
        for row in check(model, records, data.class_map.names, size, model.preset.pad_value):
            print(row, flush=True)


if __name__ == "__main__":
    main()
