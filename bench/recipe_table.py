"""The recipe sweep's table (issue #27) from its raw logs, for bench/RESULTS.md section 13.

    .venv/bin/python bench/recipe_table.py [NAME ...]

Reads ``bench/logs/recipes/<name>/metrics.json`` (every run by default, in start order from
``sweep.log`` and then by name) and its ``stdout.txt`` (the seconds of each epoch), and prints one
markdown row per run: what it changed against ``params/<file>.yaml``, AP50 per epoch, final AP /
AP50 and per-class AP, training seconds, seconds per epoch (min-max), and whether the 1-minute
load average at its start or end says it shared the CPU (``load.txt``; 2 cores: above 2.3).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

LOGS = Path(__file__).resolve().parent / "logs" / "recipes"


def _changes(params: dict) -> str:
    parts = []
    for key, value in (params.get("cfg_options") or {}).items():
        if key.endswith("norm_cfg"):
            value = value.get("type") if isinstance(value, dict) else value
        parts.append(f"{key.removeprefix('model.')}={value}")
    base = {"selection": params.get("selection"), "opt": params.get("opt"), "lr": params.get("lr"), "epochs": params.get("epochs"),
            "seed": params.get("seed"), "image_size": params.get("image_size"), "batch_size": params.get("batch_size")}
    return ", ".join([f"{k} {v}" for k, v in base.items()] + parts)


def _shared(run: Path) -> str:
    path = run / "load.txt"
    if not path.is_file():
        return "?"
    loads = [float(line.split()[0]) for line in path.read_text().splitlines() if re.match(r"^\d", line)
             and " " in line]
    return "shared" if any(v > 2.3 for v in loads) else "alone"


def row(run: Path) -> str:
    m = json.loads((run / "metrics.json").read_text())
    epochs = [float(s) for s in re.findall(r"epoch \d+/\d+: .*, ([\d.]+) s$", (run / "stdout.txt").read_text(), re.M)] \
        if (run / "stdout.txt").is_file() else []
    per_epoch = ", ".join(f"{h['AP50']:.3f}" for h in m["history"])
    res = m["metrics"]
    classes = ", ".join(f"{k} {v:.3f}" for k, v in res["per_class_AP"].items())
    spread = f"{min(epochs):.0f}-{max(epochs):.0f}" if epochs else "?"
    return (f"| {run.name} | {_changes(m['params'])} | {per_epoch} | {res['AP']:.3f} / {res['AP50']:.3f} ({classes}) | "
            f"{m['timing_s']['training']:.0f} | {spread} | {_shared(run)} |")


def main(names: list[str]) -> None:
    if not names:
        order = re.findall(r"start (\S+):", (LOGS / "sweep.log").read_text()) if (LOGS / "sweep.log").is_file() else []
        names = [n for n in dict.fromkeys([*order, *sorted(p.name for p in LOGS.iterdir() if p.is_dir())])
                 if (LOGS / n / "metrics.json").is_file()]
    print("| run | settings | AP50 per epoch | final AP / AP50 (per class AP) | training s | s per epoch | CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        print(row(LOGS / name))


if __name__ == "__main__":
    main(sys.argv[1:])
