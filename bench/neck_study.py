"""The neck study (issue 14): run the six necks on the demo recipe over seeds, then tabulate them.

    .venv/bin/python bench/neck_study.py --run --seeds 0 1 2     # fpn-lab batch per seed, params/necks/*.yaml
    .venv/bin/python bench/neck_study.py                         # the table from bench/logs/necks/

``--run`` calls ``fpn-lab batch params/necks/*.yaml --jobs 1 --set seed=K`` for each seed (one run at a
time: on two cores a second process collapses both, see bench/RESULTS.md section 8) and copies each
run's ``metrics.json`` to ``bench/logs/necks/seed<K>/<neck>.json``. The table gives, per neck, mean ±
sample sd over seeds of AP, AP50, AP small / medium / large, per-class AP and training seconds,
and whether the difference from YOLOX's own neck (``yoloxpafpn``) is larger than the seed-to-seed
spread: ``|mean_a - mean_b| > 2 * sqrt(sd_a**2 / n_a + sd_b**2 / n_b)`` (two standard errors of the
difference; a rough 95 % rule for three seeds, stated as such, not a test).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / "logs" / "necks"
PARAMS = ROOT / "params" / "necks"
BASELINE = "yoloxpafpn"
KEYS = ("AP", "AP50", "AP_small", "AP_medium", "AP_large")


def run(seeds: list[int]) -> None:
    files = sorted(str(p) for p in PARAMS.glob("*.yaml"))
    for seed in seeds:
        name = f"necks-seed{seed}"
        subprocess.run([sys.executable, "-m", "fpn_lab.cli", "batch", *files, "--jobs", "1", "--name", name,
                        "--set", f"seed={seed}", "--runs-dir", str(ROOT / "runs")], cwd=ROOT, check=False)
        out = LOGS / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        for run_dir in sorted((ROOT / "runs" / name).glob("*/")):
            if (run_dir / "metrics.json").is_file():
                shutil.copy(run_dir / "metrics.json", out / f"{run_dir.name}.json")


def load() -> dict[str, list[dict]]:
    """``{neck: [metrics.json of each seed]}`` for the runs that finished ok."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(LOGS.glob("seed*/*.json")):
        m = json.loads(path.read_text())
        if m.get("status") == "ok":
            runs.setdefault(path.stem, []).append(m)
    return runs


def _stats(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def beyond_spread(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool | None:
    """The module docstring's rule; ``None`` when either side has fewer than two seeds."""
    if a[2] < 2 or b[2] < 2:
        return None
    return abs(a[0] - b[0]) > 2 * math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])


def table(runs: dict[str, list[dict]]) -> str:
    classes = sorted({c for ms in runs.values() for m in ms for c in m["metrics"].get("per_class_AP", {})})
    cols = [*KEYS, *(f"AP {c}" for c in classes), "training s"]
    head = ["neck", "neck type", "seeds", "params (M)", *cols, f"AP vs {BASELINE}"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    base = [m["metrics"]["AP"] for m in runs.get(BASELINE, [])]
    for neck, ms in sorted(runs.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])):
        cells = []
        for c in cols:
            if c == "training s":
                vals = [m.get("timing_s", {}).get("training") for m in ms]
            elif c.startswith("AP "):
                vals = [m["metrics"].get("per_class_AP", {}).get(c[3:]) for m in ms]
            else:
                vals = [m["metrics"].get(c) for m in ms]
            mean, sd, n = _stats(vals)
            cells.append("n/a" if n == 0 else f"{mean:.3f} ± {sd:.3f}" if c != "training s" else f"{mean:.0f} ± {sd:.0f}")
        verdict = "" if neck == BASELINE else {None: "n/a (< 2 seeds)", True: "beyond the spread",
                                               False: "within the spread"}[
            beyond_spread(_stats([m["metrics"]["AP"] for m in ms]), _stats(base))]
        params = ms[0].get("model", {}).get("params")
        lines.append("| " + " | ".join([neck, ms[0].get("model", {}).get("neck", "?"), str(len(ms)),
                                        f"{params / 1e6:.2f}" if params else "?", *cells, verdict]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="train the necks first (fpn-lab batch per seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    if args.run:
        run(args.seeds)
    runs = load()
    if not runs:
        print(f"no finished runs under {LOGS}; run with --run first")
        return 1
    print(table(runs))
    print(f"\nmean ± sample sd over seeds; '{BASELINE}' is YOLOX's own YOLOXPAFPN; the last column: "
          "|difference of means| > 2 standard errors of the difference.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
