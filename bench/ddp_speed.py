"""Seconds per training epoch of the demo recipe in 1 and in 2 processes (torchrun, gloo) on this machine.

    .venv/bin/python bench/ddp_speed.py                      # nproc 1 and 2, 3 epochs each
    .venv/bin/python bench/ddp_speed.py --nproc 1 2 --epochs 3 --seed 42

Each run is ``fpn-lab run params/demo.yaml --nproc N --set epochs=E --set lr_find_iters=0`` into
``runs/ddp_speed/nproc<N>/`` (the getting-started notebook, headless, all of it); the per-epoch
seconds come from the run's ``run.log`` (the ``fpn_lab.progress`` lines, rank 0's), the threads per
process from ``metrics.json``. Epoch 1 includes the first pass's warm-up; the table reports the
median of the later epochs (the last one is YOLOX's no-augmentation epoch). ``lr`` is the demo's
0.003 scaled linearly (x N), so the accuracy columns compare two recipes, not only two speeds.
Results go to ``bench/logs/ddp_speed.txt`` (appended) and ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"fpn_lab\.progress: (?:fit \d+, )?epoch (\d+)/(\d+): .*?, ([0-9.]+) s$")


def run(nproc: int, epochs: int, seed: int) -> dict:
    run_dir = ROOT / "runs" / "ddp_speed" / f"nproc{nproc}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fpn_lab.cli", "run", "params/demo.yaml", "--nproc", str(nproc),
                           "--run-dir", str(run_dir), "--set", f"epochs={epochs}", "--set", "lr_find_iters=0",
                           "--set", f"seed={seed}"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"nproc {nproc} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return collect(nproc, run_dir, wall)


def collect(nproc: int, run_dir: Path, wall: float | None = None) -> dict:
    """The figures of one finished run folder."""
    m = json.loads((run_dir / "metrics.json").read_text())
    seconds = [float(g[3]) for g in (EPOCH_LINE.search(line) for line in (run_dir / "run.log").read_text().splitlines())
               if g]
    return {"nproc": nproc, "threads_per_process": m["threads"]["count"], "epoch_s": seconds,
            "median_epoch_s": statistics.median(seconds[1:] or seconds), "training_s": m["timing_s"]["training"],
            "notebook_s": m["timing_s"]["total_notebook"], "wall_s": round(wall, 1) if wall else None, "AP": m["metrics"]["AP"],
            "AP50": m["metrics"]["AP50"], "lr": m.get("lr"), "effective_batch_size": m["processes"]["effective_batch_size"],
            "evaluation_s": m["timing_s"].get("evaluation")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--collect", action="store_true", help="only read the kept runs/ddp_speed/nproc<N>/ folders again")
    args = ap.parse_args(argv)
    rows = [collect(n, ROOT / "runs" / "ddp_speed" / f"nproc{n}") if args.collect else run(n, args.epochs, args.seed)
            for n in args.nproc]
    lines = [f"# bench/ddp_speed.py {datetime.now().isoformat(timespec='seconds')}: demo recipe, {args.epochs} epochs, "
             f"seed {args.seed}, {len(rows)} runs one after another, nothing else running",
             "nproc threads/proc  epoch s (each)            median later  training s  evaluation s  notebook s  "
             "AP     AP50   lr      images/step"]
    for r in rows:
        lines.append(f"{r['nproc']:5d} {r['threads_per_process']:12d}  {', '.join(f'{s:.1f}' for s in r['epoch_s']):24s}  "
                     f"{r['median_epoch_s']:12.1f}  {r['training_s']:10.1f}  {r['evaluation_s']:12.2f}  "
                     f"{r['notebook_s']:10.1f}  {r['AP']:.3f}  {r['AP50']:.3f}  {r['lr']:.4f}  {r['effective_batch_size']}")
    if len(rows) > 1:
        lines.append(f"speed-up of the median epoch, nproc {rows[-1]['nproc']} vs {rows[0]['nproc']}: "
                     f"{rows[0]['median_epoch_s'] / rows[-1]['median_epoch_s']:.2f}x")
    text = "\n".join(lines)
    print(text)
    log = ROOT / "bench" / "logs" / "ddp_speed.txt"
    with log.open("a") as f:
        f.write(text + "\n" + json.dumps(rows) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
