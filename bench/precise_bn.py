"""Precise BatchNorm after training, measured on trained checkpoints without retraining.

    .venv/bin/python bench/precise_bn.py runs/demo_seeds/channels-last/seed*/model.pth
    .venv/bin/python bench/precise_bn.py --batches 10 20 --source clean augmented RUN/model.pth ...

YOLOX's BatchNorm layers use momentum 0.03 (the preset's mmdet config), set for 300 epochs; after
the demo's 7 epochs their running statistics average over weights of the last ~100 steps and over
augmented images. For each checkpoint this evaluates AP / AP50 on BCCD test as saved, then after
:func:`fpn_lab.mmdet_adapter.wrapper.recompute_batchnorm_stats` (detectron2's "precise BN": the
exact mean of batch statistics over ``--batches`` training batches of 8, weights untouched) from
``clean`` (letterboxed as validation) or ``augmented`` (the training augmentation, seeded) images.
The change only touches the final model, so its effect on the demo's result is measured here
exactly, on the same trained weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpn_lab.checkpoint import load_checkpoint  # noqa: E402
from fpn_lab.data.dataloaders import Dataset, make_dataloader  # noqa: E402
from fpn_lab.data.datasets import open_dataset  # noqa: E402
from fpn_lab.data.transforms import aug_tfms, resize_and_pad  # noqa: E402
from fpn_lab.inference import evaluate  # noqa: E402
from fpn_lab.mmdet_adapter.wrapper import recompute_batchnorm_stats  # noqa: E402
from fpn_lab.models.build import place_model  # noqa: E402
from fpn_lab.runner.context import set_seed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--batches", type=int, nargs="+", default=[20])
    ap.add_argument("--source", nargs="+", choices=["clean", "augmented"], default=["clean", "augmented"])
    args = ap.parse_args()
    data = open_dataset(ROOT / "data" / "bccd", split="published", seed=0)
    print("| checkpoint | BN statistics | AP | AP50 | AP Platelets |\n| --- | --- | --- | --- | --- |")
    for path in args.checkpoints:
        model, info = load_checkpoint(path, class_map=data.class_map)
        size, pad = info["image_size"], model.preset.pad_value
        valid = Dataset(data.valid, resize_and_pad(size, pad))
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        place_model(model, "cpu")
        rows = [("as saved", evaluate(model, valid, data.class_map)[0])]
        for source in args.source:
            for n in args.batches:
                model.load_state_dict(saved)
                set_seed(0)
                tfms = resize_and_pad(size, pad) if source == "clean" else aug_tfms(size, pad_value=pad)
                dl = make_dataloader(Dataset(data.train, tfms), 8, shuffle=True, drop_last=True, seed=0)
                batches = [b for _, b in zip(range(n), dl)]
                with torch.no_grad():
                    recompute_batchnorm_stats(model, batches)
                rows.append((f"precise, {n} {source} batches", evaluate(model, valid, data.class_map)[0]))
        for what, r in rows:
            print(f"| {path} | {what} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['per_class_AP'].get('Platelets', float('nan')):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
