"""mmcv's operators on torchvision's kernels (the default, mmcv-lite) against mmcv's compiled extension.

Run once in each environment, then compare:

    FPN_LAB_MMCV=compiled /path/to/compiled-venv/bin/python bench/ops_parity.py run --label compiled
    .venv/bin/python bench/ops_parity.py run --label lite
    .venv/bin/python bench/ops_parity.py run --label lite-1thread --threads 1
    .venv/bin/python bench/ops_parity.py report compiled lite --control lite-1thread   # -> bench/logs/ops_parity.txt

``run`` writes ``runs/ops_parity/<label>/`` (outputs and gradients as ``ops.pt``, git-ignored) and
``bench/logs/ops_parity/<label>.json`` (what the report reads besides ``ops.pt``):

* ops: NMS (2,000 boxes), DeformConv2d and ModulatedDeformConv2d (VFNet's head size: 2 x 256 x
  40 x 40, 3x3, forward and backward), RoIAlign (512 RoIs on 2 x 256 x 50 x 50, forward and
  backward), through ``mmcv.ops`` as mmdet calls them, float32, fixed seeds; milliseconds per call
  (median of 5 after one warm-up). Sigmoid focal loss and multi-scale deformable attention have no
  CPU kernel in mmcv's compiled extension, so they are compared in the tests only.
* losses: YOLOX-tiny, RetinaNet R18 and VFNet R50 from scratch, seed 0, the same 2 BCCD images at
  256 px, 20 SGD steps (lr 0.005, momentum 0.9): the loss of each step and seconds per step.

A third run of the same path with another thread count (``--threads 1``) sums in another order:
the report compares it too, as the float-rounding noise floor for the loss curves (training from
scratch amplifies a difference of 1e-7 in the first steps tenfold per step).

The demo recipe over seeds is ``bench/demo_seeds.py`` in each environment.
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

import fpn_lab.mmdet_adapter  # noqa: E402,F401  (registers mmcv's operators before mmcv.ops loads)
from fpn_lab.mmdet_adapter.mmcv_ext import ops_path  # noqa: E402

LOGS = ROOT / "bench" / "logs" / "ops_parity"
RUNS = ROOT / "runs" / "ops_parity"
MODELS = ("yolox_tiny_pafpn_300e", "retinanet_r18_fpn_1x", "vfnet_r50_fpn_ms2x")


def _timed(fn, reps: int = 5) -> tuple[object, float]:
    out = fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return out, 1000 * statistics.median(times)


def _grads(fn, *tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(torch.ones_like(out) / out.numel() ** 0.5)
    return [out.detach()] + [t.grad for t in leaves]


def op_cases() -> dict:
    """name -> (callable returning a list of tensors). Inputs from fixed seeds."""
    from mmcv.ops import batched_nms, deform_conv2d, modulated_deform_conv2d, nms, roi_align

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2000, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + torch.rand(2000, 2, generator=g) * 60 + 2], 1)
    scores = torch.rand(2000, generator=g)
    labels = torch.randint(0, 3, (2000,), generator=g)
    x = torch.randn(2, 256, 40, 40, generator=g)
    offset = torch.randn(2, 18, 40, 40, generator=g) * 2
    mask = torch.rand(2, 9, 40, 40, generator=g)
    w = torch.randn(256, 256, 3, 3, generator=g) * 0.02
    feat = torch.randn(2, 256, 50, 50, generator=g)
    rxy = torch.rand(512, 2, generator=g) * 350
    rois = torch.cat([torch.randint(0, 2, (512, 1), generator=g).float(), rxy, rxy + torch.rand(512, 2, generator=g) * 150 + 4], 1)
    return {
        "nms (2000 boxes, IoU 0.5)": lambda: [nms(boxes, scores, 0.5)[1]],
        "batched_nms (2000 boxes, 3 classes)": lambda: [batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.6))[1]],
        "DeformConv2d fwd+bwd": lambda: _grads(lambda a, o, k: deform_conv2d(a, o, k, 1, 1), x, offset, w),
        "ModulatedDeformConv2d fwd+bwd": lambda: _grads(
            lambda a, o, m, k: modulated_deform_conv2d(a, o, m, k, None, 1, 1), x, offset, mask, w),
        "RoIAlign 7x7 fwd+bwd": lambda: _grads(lambda f: roi_align(f, rois, (7, 7), 1 / 8, 0, "avg", True), feat),
    }


def run_ops() -> tuple[dict, dict]:
    outputs, ms = {}, {}
    for name, fn in op_cases().items():
        out, t = _timed(fn)
        outputs[name], ms[name] = [o.clone() for o in out], round(t, 2)
        print(f"  {name}: {t:.1f} ms", flush=True)
    return outputs, ms


def run_losses(steps: int) -> dict:
    from fpn_lab.data.dataloaders import Dataset, collate
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import SingleSplitSplitter
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.models.build import build_model
    from fpn_lab.models.registry import get_preset

    records = VOCBBoxParser(ROOT / "data/bccd/annotations", ROOT / "data/bccd/images").parse(SingleSplitSplitter())[0][:2]
    result = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, num_classes=3)
        images, targets = collate([Dataset(records, resize_and_pad(256, get_preset(name).pad_value))[i] for i in range(2)])
        opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
        model.train()
        losses, secs = [], []
        for _ in range(steps):
            t = time.perf_counter()
            out = model(images, targets)
            opt.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
            opt.step()
            secs.append(time.perf_counter() - t)
            losses.append(out["loss"].item())
        result[name] = {"losses": losses, "s_per_step": round(statistics.median(secs[1:]), 3)}
        print(f"  {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, {result[name]['s_per_step']:.3f} s/step", flush=True)
    return result


def run(label: str, steps: int) -> None:
    print(f"ops path: {ops_path()}, torch threads {torch.get_num_threads()}", flush=True)
    outputs, ms = run_ops()
    (RUNS / label).mkdir(parents=True, exist_ok=True)
    torch.save(outputs, RUNS / label / "ops.pt")
    info = {"label": label, "ops_path": ops_path(), "op_ms": ms, "losses": run_losses(steps),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{label}.json").write_text(json.dumps(info, indent=1))
    print(f"wrote {LOGS / f'{label}.json'}")


def _largest_difference(a: list, b: list) -> str:
    if any(x.dtype == torch.long for x in a):  # indices: equal or not
        same = all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))
        return "identical" if same else f"differ ({a[0].numel()} vs {b[0].numel()} kept)"
    worst = max(float((x - y).abs().max() / y.abs().max().clamp(min=1e-12)) for x, y in zip(a, b))
    absolute = max(float((x - y).abs().max()) for x, y in zip(a, b))
    return f"{absolute:.2e} (relative: {worst:.1e} of the largest value)"


def report(a: str, b: str, control: str | None = None) -> str:
    ia, ib = (json.loads((LOGS / f"{x}.json").read_text()) for x in (a, b))
    ic = json.loads((LOGS / f"{control}.json").read_text()) if control else None
    oa, ob = (torch.load(RUNS / x / "ops.pt") for x in (a, b))
    lines = [f"## mmcv operators: {a} ({ia['ops_path']}) against {b} ({ib['ops_path']})", "",
             f"Measured {ia['measured_at']} and {ib['measured_at']}, {ia['machine']}, torch threads {ia['threads']}.", "",
             f"| op | largest difference (outputs and gradients) | ms {a} | ms {b} |", "| --- | --- | --- | --- |"]
    for name in oa:
        lines.append(f"| {name} | {_largest_difference(ob[name], oa[name])} | {ia['op_ms'][name]} | {ib['op_ms'][name]} |")
    noise = f" | largest difference {b} vs {control} ({ic['threads']} thread)" if ic else ""
    lines += ["", f"| model (20 steps, seed 0) | loss step 1 | loss step 20 {a} | loss step 20 {b} | "
              f"largest loss difference {a} vs {b}{noise} | s/step {a} | s/step {b} |",
              "| --- " * (7 + bool(ic)) + "|"]
    for name in ia["losses"]:
        la, lb = ia["losses"][name]["losses"], ib["losses"][name]["losses"]
        diff = max(abs(x - y) for x, y in zip(la, lb))
        floor = (f" | {max(abs(x - y) for x, y in zip(lb, ic['losses'][name]['losses'])):.2e}" if ic else "")
        lines.append(f"| {name} | {la[0]:.4f} | {la[-1]:.4f} | {lb[-1]:.4f} | {diff:.2e}{floor} | "
                     f"{ia['losses'][name]['s_per_step']} | {ib['losses'][name]['s_per_step']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: as the machine gives); another count sums in another order, which "
                        "gives the float-rounding noise floor the two paths are judged against")
    p = sub.add_parser("report")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--control", help="a run of b's path with another thread count: the noise floor")
    args = ap.parse_args()
    if args.cmd == "run":
        if args.threads:
            torch.set_num_threads(args.threads)
        run(args.label, args.steps)
    else:
        text = report(args.a, args.b, args.control)
        (ROOT / "bench" / "logs" / "ops_parity.txt").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
