"""The demo recipe over several seeds, each run in its own process: AP, AP50, per-class AP, time to AP50 0.8.

    .venv/bin/python bench/demo_seeds.py --name baseline                  # params/demo.yaml, seeds 0-4
    .venv/bin/python bench/demo_seeds.py --name ema --set ema=true --seeds 0 1 2
    .venv/bin/python bench/demo_seeds.py --summary bench/logs/demo_seeds/baseline
    .venv/bin/python bench/demo_seeds.py --ablation bench/logs/demo_seeds/* --seeds 0 1 2   # one row per sweep

Each seed is ``fpn-lab run PARAMS --set seed=K`` (the getting-started notebook, headless) into
``runs/demo_seeds/<name>/seed<K>/``; its ``metrics.json`` is copied to
``bench/logs/demo_seeds/<name>/seed<K>.json`` together with the per-epoch seconds read from the
run's ``run.log`` (the ``fpn_lab.progress`` lines) and the share of the machine's CPU time that
other processes used while it ran (``/proc/stat`` busy time minus the run's own CPU time from
``getrusage(RUSAGE_CHILDREN)``, over wall time x cores): above 10 % the run is marked ``contended``
(its accuracy counts, its times should not be compared). The summary prints one row per seed and
the mean, sample standard deviation and minimum of each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOGS = ROOT / "bench" / "logs" / "demo_seeds"
EPOCH_LINE = re.compile(r"fpn_lab\.progress: (?:fit \d+, )?epoch (\d+)/(\d+): .*?AP50 ([0-9.na]+),.* ([0-9.]+) s$", re.M)
CONTENDED_SHARE = 0.10  # share of all cores' time used by other processes above which a run was contended


def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``, via
    :func:`fpn_lab.threads.cpu_times`), or ``None`` off Linux."""
    from fpn_lab.threads import cpu_times

    ticks = cpu_times()
    return sum(busy for busy, _ in ticks.values()) / os.sysconf("SC_CLK_TCK") if ticks else None


def epoch_log(run_log: Path) -> list[dict]:
    """``[{"epoch", "AP50", "seconds"}]`` from the run's per-epoch lines (the last fit's, as fine_tune logs two)."""
    rows = []
    for m in EPOCH_LINE.finditer(run_log.read_text() if run_log.is_file() else ""):
        epoch, ap50, seconds = int(m.group(1)), m.group(3), float(m.group(4))
        if epoch == 1:
            rows = []
        rows.append({"epoch": epoch, "AP50": float(ap50) if ap50 != "nan" else None, "seconds": seconds})
    return rows


def seconds_to(rows: list[dict], key: str, floor: float) -> float | None:
    """Training seconds until the first epoch whose ``key`` reached ``floor`` (``None``: never)."""
    total = 0.0
    for r in rows:
        total += r["seconds"]
        if r[key] is not None and r[key] >= floor:
            return round(total, 1)
    return None


def run_seed(params: Path, seed: int, name: str, overrides: list[str], out_dir: Path) -> dict:
    run_dir = ROOT / "runs" / "demo_seeds" / name / f"seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "fpn_lab.cli", "run", str(params), "--run-dir", str(run_dir), "--set", f"seed={seed}"]
    for item in overrides:
        cmd += ["--set", item]
    busy0, own0, t0 = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    busy1, own1, wall = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    other = None if busy0 is None else max(0.0, (busy1 - busy0 - own) / (wall * (os.cpu_count() or 1)))
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    epochs = epoch_log(run_dir / "run.log")
    record = {"seed": seed, "returncode": proc.returncode, "status": metrics.get("status", "failed"),
              "overrides": overrides, "other_cpu_share": None if other is None else round(other, 3),
              "contended": other is not None and other > CONTENDED_SHARE, "epoch_log": epochs,
              "s_to_AP50_0.8": seconds_to(epochs, "AP50", 0.8), "metrics_json": metrics}
    if proc.returncode:
        record["stderr_tail"] = proc.stderr[-2000:]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"seed{seed}.json").write_text(json.dumps(record, indent=1))
    return record


def _contended(record: dict) -> str:
    """``yes``, ``no``, or ``unknown`` for records of the script's first version, which kept only the
    load average (it counts the run itself, so it cannot tell)."""
    if "other_cpu_share" not in record or record["other_cpu_share"] is None:
        return "unknown"
    return "yes" if record["contended"] else "no"


def _fmt(values: list, digits: int = 3) -> str:
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f} (min {min(vals):.{digits}f})"


def summary(out_dir: Path) -> str:
    records = [json.loads(p.read_text()) for p in sorted(out_dir.glob("seed*.json"))]
    if not records:
        raise SystemExit(f"no seed*.json in {out_dir}")
    classes = sorted({c for r in records for c in r["metrics_json"].get("metrics", {}).get("per_class_AP", {})})
    head = ["seed", "status", "AP", "AP50", *[f"AP {c}" for c in classes], "s to AP50 0.8", "training s", "contended"]
    lines = [f"### {out_dir.name}: {records[0]['metrics_json'].get('params', {}).get('selection', '?')}, "
             f"overrides {records[0]['overrides'] or 'none'}", "", "| " + " | ".join(head) + " |",
             "|" + " --- |" * len(head)]
    cols: dict[str, list] = {k: [] for k in head}
    for r in records:
        m = r["metrics_json"].get("metrics", {})
        row = {"seed": r["seed"], "status": r["status"], "AP": m.get("AP"), "AP50": m.get("AP50"),
               **{f"AP {c}": m.get("per_class_AP", {}).get(c) for c in classes},
               "s to AP50 0.8": r["s_to_AP50_0.8"],
               "training s": r["metrics_json"].get("timing_s", {}).get("training"),
               "contended": _contended(r)}
        for k, v in row.items():
            cols[k].append(v)
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else ("n/a" if v is None else str(v))
                                        for v in row.values()) + " |")
    uncontended = [i for i, r in enumerate(records) if _contended(r) != "yes"]
    stats = ["mean ± sd (min)", "", _fmt(cols["AP"]), _fmt(cols["AP50"]), *[_fmt(cols[f"AP {c}"]) for c in classes],
             _fmt([cols["s to AP50 0.8"][i] for i in uncontended], 0), _fmt([cols["training s"][i] for i in uncontended], 0),
             f"{sum(_contended(r) == 'yes' for r in records)} of {len(records)}"]
    lines.append("| " + " | ".join(stats) + " |")
    lines.append("")
    lines.append("Times: runs not marked contended. AP and AP50 on the validation split (COCO, pycocotools).")
    return "\n".join(lines)


def ablation(dirs: list[Path], seeds: list[int]) -> str:
    """One row per sweep folder over the given seeds: overrides, AP50 and AP mean ± sd (min),
    Platelets AP, training s and s to AP50 0.8 (uncontended runs only), how many reached AP50 0.8."""
    head = ["recipe", "overrides", "seeds", "AP50", "AP", "AP Platelets", "training s", "s to AP50 0.8",
            "reached AP50 0.8", "contended"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for d in dirs:
        records = [json.loads(p.read_text()) for p in sorted(d.glob("seed*.json"))]
        records = [r for r in records if r["seed"] in seeds]
        if not records:
            lines.append(f"| {d.name} | no runs for seeds {seeds} |" + " |" * (len(head) - 2))
            continue
        met = [r["metrics_json"].get("metrics", {}) for r in records]
        free = [r for r in records if _contended(r) != "yes"]
        reached = [r["s_to_AP50_0.8"] for r in free]
        lines.append("| " + " | ".join([
            d.name, ", ".join(records[0]["overrides"]) or "none", " ".join(str(r["seed"]) for r in records),
            _fmt([m.get("AP50") for m in met]), _fmt([m.get("AP") for m in met]),
            _fmt([m.get("per_class_AP", {}).get("Platelets") for m in met]),
            _fmt([r["metrics_json"].get("timing_s", {}).get("training") for r in free], 0),
            _fmt([v for v in reached if v is not None], 0),
            f"{sum(1 for m in met if (m.get('AP50') or 0) >= 0.8)} of {len(records)}",
            f"{len(records) - len(free)} of {len(records)}"]) + " |")
    lines += ["", "mean ± sd (min) over the seeds; times over runs not marked contended; s to AP50 0.8 over the "
              "runs that reached it."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params" / "demo.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--name", default="baseline", help="folder under bench/logs/demo_seeds/ (one per recipe)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter in every run")
    ap.add_argument("--out", help="folder for the per-seed JSON (default bench/logs/demo_seeds/<name>)")
    ap.add_argument("--summary", metavar="DIR", help="only print the table of an earlier sweep")
    ap.add_argument("--ablation", nargs="+", metavar="DIR", help="only print one row per earlier sweep (over --seeds)")
    ap.add_argument("--quick", action="store_true", help="smoke mode: params/smoke.yaml, one seed, a temporary folder")
    args = ap.parse_args(argv)
    if args.ablation:
        print(ablation([Path(d) for d in args.ablation], args.seeds))
        return 0
    if args.summary:
        print(summary(Path(args.summary)))
        return 0
    params, seeds, out = Path(args.params), args.seeds, Path(args.out) if args.out else LOGS / args.name
    if args.quick:
        import tempfile

        params, seeds = ROOT / "params" / "smoke.yaml", [0]
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="demo_seeds-"))
    failed = 0
    for seed in seeds:
        record = run_seed(params, seed, args.name if not args.quick else "quick", args.set, out)
        failed += record["status"] != "ok"
        print(f"seed {seed}: {record['status']}, AP50 {record['metrics_json'].get('metrics', {}).get('AP50')}, "
              f"other processes' CPU share {record['other_cpu_share']}", flush=True)
    print(summary(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
