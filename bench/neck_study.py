"""The neck studies (written up in docs/necks.md): train each neck over seeds, then report.

    .venv/bin/python bench/neck_study.py --run --seeds 0 1 2   # train params/necks/*.yaml per seed (about an hour)
    .venv/bin/python bench/neck_study.py --report              # tables, figures and docs/necks.md from the runs
    make necks                                                 # both
    .venv/bin/python bench/neck_study.py --study retinanet --run --seeds 1   # the RetinaNet study (16 min per run)

``--study yolox`` (default) is YOLOX-tiny with six necks (``params/necks/``); ``--study retinanet`` is
the RetinaNet R18 recipe (``params/retinanet_bccd.yaml``) with five (``params/necks_retinanet/``,
which differ only in ``neck:``), its files under ``bench/logs/necks_retinanet/``,
``runs/necks_retinanet/`` and ``docs/necks/retinanet_*.png``, its part of docs/necks.md between the
``neck-study-retinanet`` markers. The paths below are the YOLOX study's.

``--run`` trains with :func:`fpn_lab.runner.studies.train_necks` (one ``fpn-lab batch`` per seed, one
run at a time: on two cores a second process collapses both, see bench/RESULTS.md section 8) into
``runs/necks/seed<K>/<neck>/`` and copies each run's ``metrics.json`` to
``bench/logs/necks/seed<K>/<neck>.json`` (kept in git).

``--report`` reads ``bench/logs/necks/`` and writes, from the same functions the notebook
``compare_necks.ipynb`` uses (:mod:`fpn_lab.runner.compare`):

* the per-neck table (mean ± sd over seeds, the 2-standard-error screen against YOLOX's own neck)
  with parameters, FLOPs and single-image latency of an untrained copy of each neck's model;
* per neck and class, the share of BCCD test boxes each pyramid level gets from the model's own
  assigner (YOLOX: SimOTA), from each neck's seed-0 checkpoint (``runs/necks/seed0/<neck>/model.pth``);
* the neck-output figure (:func:`fpn_lab.viz.draw.show_fpn_features`) per neck, same image;
* ``docs/necks/*.png`` and the generated part of ``docs/necks.md`` (between its ``neck-study`` markers),
  and the same text in ``bench/logs/neck_study.txt``.

Latency is measured in this process: run ``--report`` with nothing else busy.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DOCS = ROOT / "docs"
FIGS = DOCS / "necks"


@dataclass(frozen=True)
class Study:
    """Where one study's params, logs, runs, figures and docs/necks.md section are."""

    name: str
    params: Path
    logs: Path
    runs: Path
    prefix: str  # of its figure files in docs/necks/
    begin: str
    end: str
    assigner: str  # how its head assigns boxes, for the level section's caption


STUDIES = {
    "yolox": Study("yolox", ROOT / "params" / "necks", ROOT / "bench" / "logs" / "necks", ROOT / "runs" / "necks", "",
                   "<!-- neck-study:begin (bench/neck_study.py --report writes this part) -->",
                   "<!-- neck-study:end -->", "SimOTA"),
    "retinanet": Study("retinanet", ROOT / "params" / "necks_retinanet", ROOT / "bench" / "logs" / "necks_retinanet",
                       ROOT / "runs" / "necks_retinanet", "retinanet_",
                       "<!-- neck-study-retinanet:begin (bench/neck_study.py --study retinanet --report writes this "
                       "part) -->",
                       "<!-- neck-study-retinanet:end -->", "MaxIoU on anchors"),
}


def run(study: Study, seeds: list[int]) -> None:
    from fpn_lab.runner.studies import train_necks

    for seed in seeds:  # one seed at a time, so the metrics of a finished seed are kept if a later one fails
        (batch_dir,) = train_necks(study.params, [seed], runs_dir=study.runs)
        out = study.logs / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        for metrics in sorted(batch_dir.glob("*/metrics.json")):
            shutil.copy(metrics, out / f"{metrics.parent.name}.json")


def _save(fig, name: str) -> str:
    import matplotlib.pyplot as plt

    FIGS.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGS / name, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"necks/{name}"


def levels_section(study: Study, checkpoints: Path, metrics: list[dict]) -> tuple[str, list[str]]:
    """Per neck and class, the level shares of the test boxes (seed-0 checkpoints) and one figure
    of them; the neck-output figure per neck. Returns markdown and the figure paths."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from assigner_check import level_shares

    from fpn_lab.checkpoint import load_checkpoint
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.datasets import open_dataset
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.runner.compare import neck_label
    from fpn_lab.viz.draw import show_fpn_features

    seed0 = {Path(m["_source"]).stem: m for m in metrics if Path(m["_source"]).parent.name == "seed0"}
    data = open_dataset(ROOT / "data" / "bccd", split="published", seed=0)
    names = data.class_map.names
    # the neck-output figure's image: the first test image holding every class
    index = next(i for i, r in enumerate(data.valid) if set(r.labels.tolist()) >= set(range(len(names))))
    lines, figs, shares = [], [], {}
    lines.append("| neck | class | boxes | median side px | " + " | ".join(f"P{k}" for k in range(3, 8)) + " | no positive prior |")
    lines.append("|" + " --- |" * 10)
    for stem, m in sorted(seed0.items()):
        label, size = neck_label(m), m["params"]["image_size"]
        path = checkpoints / stem / "model.pth"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: the level shares need the seed-0 checkpoints; run --run --seeds 0 first.")
        torch.manual_seed(0)
        model, _ = load_checkpoint(path, class_map=data.class_map)
        model.eval()
        shares[label] = s = level_shares(model, data.valid, names, size, model.preset.pad_value)
        for name, v in s.items():
            cells = [f"{x:.0%}" for x in v["levels"]] + ["-"] * (5 - len(v["levels"]))
            lines.append(f"| {label} | {name} | {v['boxes']} | {v['median_side']:.1f} | " + " | ".join(cells)
                         + f" | {v['none']:.0%} |")
        ds = Dataset(data.valid, resize_and_pad(size, model.preset.pad_value))
        fig = show_fpn_features(model, ds, index=index, class_names=names)
        fig.suptitle(f"{label}: neck outputs (seed-0 checkpoint), BCCD test image {data.valid[index].image_id}", y=1.02)
        figs.append(_save(fig, f"{study.prefix}features_{stem}.png"))
    fig, axes = plt.subplots(1, len(shares), figsize=(2.6 * len(shares), 2.8), sharey=True)
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, 5))
    for ax, (label, s) in zip(np.atleast_1d(axes), shares.items()):
        left = np.zeros(len(s))
        for k in range(5):
            vals = np.array([v["levels"][k] if k < len(v["levels"]) else 0 for v in s.values()])
            ax.barh(list(s), vals, left=left, color=colors[k], label=f"P{k + 3}")
            left += vals
        ax.barh(list(s), [v["none"] for v in s.values()], left=left, color="lightgrey", label="none")
        ax.set(title=label, xlim=(0, 1), xlabel="share of test boxes")
        ax.title.set_fontsize(9)
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Pyramid level the model's assigner ({study.assigner}) gives each test box, per class (seed 0)")
    fig.tight_layout()
    figs.insert(0, _save(fig, f"{study.prefix}levels.png"))
    return "\n".join(lines), figs


def report(study: Study, checkpoints: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from fpn_lab.runner.compare import add_complexity, load_runs, markdown_table, neck_figures, neck_table, table_records

    metrics = load_runs(study.logs)
    rows = add_complexity(neck_table(metrics), metrics)
    figs = {name: _save(fig, f"{study.prefix}{name}.png") for name, fig in neck_figures(rows).items()}
    levels_md, level_figs = levels_section(study, checkpoints, metrics)
    size = metrics[0]["params"]["image_size"]
    seeds = sorted({s for r in rows for s in r["seeds"]})
    text = "\n".join([
        study.begin,
        f"Generated {datetime.now():%Y-%m-%d %H:%M} by `bench/neck_study.py --study {study.name} --report` from "
        f"{len(metrics)} runs (`{study.logs.relative_to(ROOT)}/seed*/`, seeds {seeds}); FLOPs, parameters and "
        f"latency from untrained copies, latency with {torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        "",
        "### Accuracy, cost and time per neck",
        "",
        markdown_table(table_records(rows)),
        "",
        *(f"![{name}]({path})" for name, path in figs.items()),
        "",
        f"### Which level takes which boxes (BCCD test split, {size} px, seed-0 checkpoints)",
        "",
        levels_md,
        "",
        f"![levels]({level_figs[0]})",
        "",
        "Neck outputs per level (L2 norm over channels, one colour scale per neck; each box drawn on the level "
        "its assigner picks):",
        "",
        *(f"![{Path(p).stem}]({p})" for p in level_figs[1:]),
        study.end,
    ])
    doc = DOCS / "necks.md"
    body = doc.read_text()
    if study.begin not in body or study.end not in body:
        raise SystemExit(f"{doc} has lost its markers {study.begin!r} ... {study.end!r}; put them back where the "
                         "tables go.")
    doc.write_text(body[: body.index(study.begin)] + text + body[body.index(study.end) + len(study.end):])
    (ROOT / "bench" / "logs" / f"neck_study{'_' + study.name if study.prefix else ''}.txt").write_text(text + "\n")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="train the necks (fpn-lab batch per seed)")
    ap.add_argument("--study", choices=sorted(STUDIES), default="yolox", help="which detector's study (default yolox)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report", action="store_true", help="write the tables, figures and docs/necks.md")
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help="the seed-0 runs (<neck>/model.pth); default runs/<study folder>/seed0")
    args = ap.parse_args(argv)
    if not (args.run or args.report):
        ap.error("give --run, --report or both")
    study = STUDIES[args.study]
    if args.run:
        run(study, args.seeds)
    if args.report:
        print(report(study, args.checkpoints or study.runs / "seed0"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
