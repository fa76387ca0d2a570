"""Measure parameter count and CPU seconds per training step for every preset.

Writes ``fpn_lab/models/measured.json`` (read by the notebook's selection table) and prints a
Markdown table. Setting: num_classes=3, from scratch, batch 2 of BCCD images letterboxed to each
size, SGD step included; median of ``--steps`` timed steps after one warm-up step; torch threads
as the machine gives (2 here).

    .venv/bin/python bench/step_time.py                 # every preset, 256 and 384 px
    .venv/bin/python bench/step_time.py --quick         # one small preset, one size, 1 step (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpn_lab.data.dataloaders import Dataset, collate  # noqa: E402
from fpn_lab.data.parsers import VOCBBoxParser  # noqa: E402
from fpn_lab.data.splits import SingleSplitSplitter  # noqa: E402
from fpn_lab.data.transforms import resize_and_pad  # noqa: E402
from fpn_lab.models.build import build_model, count_parameters  # noqa: E402
from fpn_lab.models.catalogue import MEASURED  # noqa: E402
from fpn_lab.models.registry import get_preset, list_models  # noqa: E402


def step_seconds(model, images, targets, steps: int) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    times = []
    for k in range(steps + 1):
        t = time.perf_counter()
        out = model(images, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if k:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="*")
    ap.add_argument("--sizes", default="256,384")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke mode: yolox_tiny at 64 px, 1 step, no file written")
    ap.add_argument("--out", default=str(MEASURED))
    args = ap.parse_args()
    if args.quick:
        args.presets, args.sizes, args.steps = "yolox_tiny*", "64", 1
    parser = VOCBBoxParser(ROOT / "data/bccd/annotations", ROOT / "data/bccd/images")
    records = parser.parse(SingleSplitSplitter())[0][:2]
    results = json.loads(Path(args.out).read_text()).get("presets", {}) if Path(args.out).is_file() else {}
    print("| preset | params (M) | " + " | ".join(f"s/step @{s}" for s in args.sizes.split(",")) + " |")
    for name in list_models(args.presets):
        torch.manual_seed(0)
        model = build_model(name, num_classes=3)
        entry = {"params": count_parameters(model), "cpu_step_s": {}}
        for size in map(int, args.sizes.split(",")):
            images, targets = collate([Dataset(records, resize_and_pad(size, get_preset(name).pad_value))[i] for i in range(2)])
            entry["cpu_step_s"][str(size)] = round(step_seconds(model, images, targets, args.steps), 3)
        results[name] = entry
        print(f"| {name} | {entry['params'] / 1e6:.2f} | " + " | ".join(f"{v:.3f}" for v in entry["cpu_step_s"].values()) + " |",
              flush=True)
    if not args.quick:
        meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                           f"{torch.get_num_threads()}", "torch": torch.__version__, "batch": 2, "steps": args.steps,
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        Path(args.out).write_text(json.dumps({"meta": meta, "presets": results}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
