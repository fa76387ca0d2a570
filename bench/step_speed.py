"""Speed of the demo's training step under thread settings, a busy core, channels-last and torch.compile.

    .venv/bin/python bench/step_speed.py                         # every variant, interleaved, 3 repeats
    .venv/bin/python bench/step_speed.py --variants default,threads1 --busy
    .venv/bin/python bench/step_speed.py --quick                 # smoke: 64 px, 2 steps

Each measurement is its own process (OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads
it): YOLOX-tiny from scratch (the demo's preset), one batch of ``--batch`` BCCD images
letterboxed to ``--size`` px, ``--steps`` timed training steps (preprocess, loss, backward, fused
AdamW step) after two warm-up steps; the median step is reported. Variants run interleaved
(A, B, C, A, B, C, ...) so the machine's drift falls on all of them. ``--busy`` starts one
competing process (a Python busy loop, what another notebook's kernel looks like to the
scheduler) beside every measurement, so the step shares the machine as in a Jupyter session
with something else running.

The step's work is counted as 3 x the forward FLOPs (backward ~ 2 x forward; mmengine's
counter, one multiply-add = one FLOP, so x2 for floating-point operations) and set against this
CPU's measured float32 matmul rate (``torch.mm`` on 2048 x 2048, the same threads): how close to
the machine's limit a step runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (environment for the process, settings in the process)
VARIANTS = {
    "default": ({}, {}),
    "threads1": ({}, {"threads": 1}),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "spin10k": ({"GOMP_SPINCOUNT": "10000"}, {}),
    "spin1k": ({"GOMP_SPINCOUNT": "1000"}, {}),
    "fpn_lab": ({}, {"fpn_lab": True}),
    "channels_last": ({}, {"channels_last": True}),
    "channels_last_model": ({}, {"channels_last_model": True}),
    "compile": ({}, {"compile": True}),
}


def worker(settings: dict, size: int, batch: int, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    if settings.get("fpn_lab"):  # what a notebook gets: fpn_lab imported before torch, then its thread setting
        import fpn_lab  # noqa: F401

        from fpn_lab.threads import configure_threads

        configure_threads(0)
    import torch

    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    from fpn_lab.data.dataloaders import Dataset, collate
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import SingleSplitSplitter
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.models.build import build_model
    from fpn_lab.models.registry import get_preset

    name = "yolox_tiny_pafpn_300e"
    records = VOCBBoxParser(ROOT / "data/bccd/annotations", ROOT / "data/bccd/images").parse(SingleSplitSplitter())[0][:batch]
    torch.manual_seed(0)
    model = build_model(name, num_classes=3)
    ds = Dataset(records, resize_and_pad(size, get_preset(name).pad_value))
    images, targets = collate([ds[i] for i in range(len(ds))])
    if settings.get("fpn_lab"):
        from fpn_lab.models.build import place_model

        model = place_model(model, "cpu")  # the notebook's default: channels-last weights
    if settings.get("channels_last") or settings.get("channels_last_model"):
        model = model.to(memory_format=torch.channels_last)  # weights; inputs too only for "channels_last"
    extract = model.detector.extract_feat
    if settings.get("compile"):
        model.detector.extract_feat = torch.compile(extract)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        inputs, samples = model.preprocess(images, targets, training=True)
        if settings.get("channels_last"):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        loss, _ = model.detector.parse_losses(model.detector.loss(inputs, samples))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    a = torch.randn(2048, 2048)
    torch.mm(a, a)
    t = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    mm_flops = 5 * 2 * 2048**3 / (time.perf_counter() - t)
    from fpn_lab.mmdet_adapter.complexity import count_flops

    fwd = count_flops(build_model(name, num_classes=3), size)["flops"] * batch * 2  # multiply-adds -> FLOPs
    step = statistics.median(times)
    return {"step_s": step, "threads": torch.get_num_threads(), "step_gflops": 3 * fwd / step / 1e9,
            "matmul_gflops": mm_flops / 1e9}


def measure(variant: str, args) -> dict:
    env, settings = VARIANTS[variant]
    cmd = [sys.executable, __file__, "--worker", json.dumps(settings), "--size", str(args.size),
           "--batch", str(args.batch), "--steps", str(args.steps)]
    busy = None
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", action="store_true", help="one competing busy process beside each measurement")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker), args.size, args.batch, args.steps)))
        return
    if args.quick:
        args.size, args.batch, args.steps, args.repeats = 64, 2, 2, 1
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    results = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            results[v].append(measure(v, args))
    print(f"YOLOX-tiny training step, batch {args.batch}, {args.size} px, median of {args.steps} steps per process, "
          f"{args.repeats} interleaved repeats; competing busy process: {'yes' if args.busy else 'no'}; "
          f"os.cpu_count() {os.cpu_count()}, usable {len(os.sched_getaffinity(0))}\n")
    print("| variant | threads | s/step (median of repeats) | repeats | step GFLOP/s | matmul GFLOP/s | share of matmul |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for v, rs in results.items():
        step = statistics.median(r["step_s"] for r in rs)
        gf = statistics.median(r["step_gflops"] for r in rs)
        mm = statistics.median(r["matmul_gflops"] for r in rs)
        each = ", ".join(f"{r['step_s']:.3f}" for r in rs)
        print(f"| {v} | {rs[0]['threads']} | {step:.3f} | {each} | "
              f"{gf:.1f} | {mm:.1f} | {gf / mm:.0%} |", flush=True)


if __name__ == "__main__":
    main()
