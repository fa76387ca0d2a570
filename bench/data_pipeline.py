"""Data pipeline throughput: images per second from the fpn_lab training DataLoader (decode,
albumentations, letterbox, collate) against the rate the model consumes them.

The loader is timed for one cold epoch (images decoded from disk) and one warm epoch (decoded
images cached in memory); the model rate is YOLOX-tiny training steps on batches from it.

    .venv/bin/python bench/data_pipeline.py            # BCCD trainval, 320 px, batch 8
    .venv/bin/python bench/data_pipeline.py --quick    # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpn_lab.data.dataloaders import Dataset, make_dataloaders  # noqa: E402
from fpn_lab.data.parsers import VOCBBoxParser  # noqa: E402
from fpn_lab.data.splits import VOCImageSetSplitter  # noqa: E402
from fpn_lab.data.transforms import aug_tfms, resize_and_pad  # noqa: E402
from fpn_lab.models.build import build_model  # noqa: E402


def epoch_rate(dl) -> float:
    n, t = 0, time.perf_counter()
    for images, _ in dl:
        n += len(images)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    parser = VOCBBoxParser(ROOT / "data/bccd/annotations", ROOT / "data/bccd/images")
    train, test = parser.parse(VOCImageSetSplitter(ROOT / "data/bccd/ImageSets/Main"))
    if args.quick:
        train, args.size, args.batch, args.steps = train[:8], 64, 4, 1
    ds = Dataset(train, aug_tfms(args.size, pad_value=(114, 114, 114)))
    dls = make_dataloaders(ds, Dataset(test[:8], resize_and_pad(args.size)), args.batch, num_workers=args.workers)
    cold = epoch_rate(dls.train)
    warm = epoch_rate(dls.train)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = [b for _, b in zip(range(args.steps + 1), dls.train)]
    t = None
    for k, (images, targets) in enumerate(batches):
        if k == 1:
            t = time.perf_counter()
        loss = model(images, targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model_rate = args.batch * (len(batches) - 1) / (time.perf_counter() - t)
    print(f"| loader cold (decode) img/s | loader warm (cached) img/s | YOLOX-tiny training img/s | warm / model |")
    print(f"| --- | --- | --- | --- |\n| {cold:.1f} | {warm:.1f} | {model_rate:.1f} | {warm / model_rate:.1f}x |")
    print(f"({args.size} px, batch {args.batch}, {args.workers} workers, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
