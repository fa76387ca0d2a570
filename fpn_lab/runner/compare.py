"""Neck comparison from finished runs: group ``metrics.json`` files by neck, mean ± sd over seeds,
and whether each neck differs from the baseline by more than the seed-to-seed spread.

Used by ``notebooks/compare_necks.ipynb``, by the comparison page of a batch (``fpn-lab batch``) and
by ``bench/neck_study.py``, so the three show the same numbers.

The rule for "beyond the spread" (:func:`beyond_spread`): ``|mean_a - mean_b| > 2 * SE`` with
``SE = sqrt(sd_a**2 / n_a + sd_b**2 / n_b)`` (sample sd over seeds). Two standard errors of the
difference is a rough 95 % rule; with three seeds per neck the sd itself is uncertain, so it is a
screen, not a significance test.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from fpn_lab.errors import ParamsError

KEYS = ("AP", "AP50", "AP_small", "AP_medium", "AP_large")
# parameters that may differ between the runs of one comparison (everything else must match)
VARYING = frozenset({"neck", "neck_args", "seed", "run_name", "run_dir", "num_threads", "num_workers"})


def load_runs(paths: str | Path | Iterable[str | Path]) -> list[dict]:
    """Read runs' ``metrics.json`` files.

    Args:
        paths: files, or folders searched recursively for ``*.json`` files that are fpn_lab run
            metrics (they carry ``schema_version`` and ``status``; other JSON such as
            ``predictions.json`` is passed over).

    Returns:
        One dict per file, the file's content plus ``_source`` (its path), sorted by path. Failed
        runs are included (``status != "ok"``); :func:`neck_table` refuses them.

    Raises:
        ParamsError: a path does not exist, or no run metrics were found.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise ParamsError(f"runs to compare: {str(p)!r} does not exist; give metrics.json files or folders holding them.")
    runs = []
    for f in sorted(set(files)):
        try:
            m = json.loads(f.read_text())
        except ValueError as e:
            raise ParamsError(f"{f} is not valid JSON ({e}); remove it or give the run folders explicitly.") from e
        if isinstance(m, dict) and "schema_version" in m and "status" in m:
            runs.append({**m, "_source": str(f)})
    if not runs:
        raise ParamsError(f"no run metrics (metrics.json) under {[str(p) for p in paths]}; train the runs first "
                          "(compare_necks.ipynb with train=True, or fpn-lab batch).")
    return runs


def neck_label(m: dict) -> str:
    """The neck a run trained with: its class name (``FPN``, ``BiFPN``, ``YOLOXPAFPN``...) plus any
    ``neck_args``, e.g. ``BiFPN(fusion=sum)``."""
    name = m.get("model", {}).get("neck") or m.get("params", {}).get("neck") or "?"
    args = m.get("params", {}).get("neck_args") or {}
    return name + (f"({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})" if args else "")


def _stats(values) -> tuple[float, float, int]:
    """``(mean, sample sd, n)`` over the numbers in ``values``; COCO's -1 ("no boxes in this
    range") and NaN are left out."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v) and v != -1]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def beyond_spread(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool | None:
    """The module docstring's rule on two ``(mean, sd, n)``; ``None`` when either has fewer than two seeds."""
    if a[2] < 2 or b[2] < 2:
        return None
    return abs(a[0] - b[0]) > 2 * math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])


def _differences(runs: list[dict]) -> list[str]:
    """Parameters, other than those in :data:`VARYING`, whose value differs between runs."""
    keys = sorted({k for m in runs for k in m.get("params", {})} - VARYING)
    return [k for k in keys if len({json.dumps(m.get("params", {}).get(k), sort_keys=True) for m in runs}) > 1]


def neck_table(runs: Sequence[dict], baseline: str = "") -> list[dict]:
    """One row per neck: mean ± sd over its runs (seeds) and the verdict against ``baseline``.

    Args:
        runs: ``metrics.json`` dicts (:func:`load_runs`), all ``status: ok``, all with the same
            parameters except those in :data:`VARYING` (neck, its arguments, seed...).
        baseline: the :func:`neck_label` to compare against; ``""``: the preset's own neck (the
            runs with ``neck: ""``), else the first neck.

    Returns:
        Rows ``{"neck", "neck_param", "seeds", "n", "params", "neck_params", "stats", "per_class",
        "train_s", "eval_ms_per_image", "delta_AP", "verdict"}``: ``stats[key]`` and ``per_class[name]``
        are ``(mean, sd, n)`` of the COCO metric (AP@[.5:.95], AP50, AP by COCO size range);
        ``train_s`` the training seconds, ``eval_ms_per_image`` each run's evaluation milliseconds per
        image; ``verdict`` is ``"baseline"``, ``"beyond the spread"``, ``"within the spread"`` or
        ``"n/a (< 2 seeds)"`` for AP. The baseline row comes first, then the others by name.

    Raises:
        ParamsError: a run failed or has no AP, the runs differ in more than the neck and seed, two
            runs of one neck share a seed, or ``baseline`` names no neck in ``runs``.
    """
    failed = [m["_source"] if "_source" in m else m.get("params", {}).get("run_name") for m in runs
              if m.get("status") != "ok"]
    if failed:
        raise ParamsError(f"cannot compare runs that did not finish ok: {failed}; rerun them or leave them out.")
    no_ap = [m["_source"] if "_source" in m else m.get("params", {}).get("run_name") for m in runs
             if not isinstance(m.get("metrics", {}).get("AP"), (int, float)) or math.isnan(m["metrics"]["AP"])]
    if no_ap:
        raise ParamsError(f"runs without an AP (nan: nothing was scored) cannot be compared: {no_ap}; their seeds would "
                          "drop out of the mean while still counted. Rerun them or leave them out.")
    diff = _differences(list(runs))
    if diff:
        raise ParamsError(f"the runs differ in {diff}, not only in the neck and seed: a comparison of necks needs one "
                          "recipe; compare those runs in a batch page instead, or rerun them alike.")
    groups: dict[str, list[dict]] = {}
    for m in runs:
        groups.setdefault(neck_label(m), []).append(m)
    for label, ms in groups.items():
        seeds = [m.get("seed", m.get("params", {}).get("seed")) for m in ms]
        if len(set(seeds)) < len(seeds):
            raise ParamsError(f"neck {label}: two runs share a seed ({seeds}); the spread over seeds would be wrong. "
                              "Leave out the duplicate run.")
    if baseline and baseline not in groups:
        raise ParamsError(f"baseline {baseline!r} is not one of the necks compared: {sorted(groups)}.")
    base = baseline or next((k for k, ms in groups.items() if not ms[0].get("params", {}).get("neck")), next(iter(groups)))
    classes = sorted({c for m in runs for c in m.get("metrics", {}).get("per_class_AP", {})})
    rows = []
    for label in [base, *sorted(k for k in groups if k != base)]:
        ms = groups[label]
        met = [m.get("metrics", {}) for m in ms]
        model = ms[0].get("model", {})
        rows.append({
            "neck": label, "neck_param": ms[0].get("params", {}).get("neck", ""),
            "seeds": sorted(m.get("seed", m.get("params", {}).get("seed")) for m in ms), "n": len(ms),
            "params": model.get("params"), "neck_params": model.get("neck_params"),
            "stats": {k: _stats(x.get(k) for x in met) for k in KEYS},
            "per_class": {c: _stats(x.get("per_class_AP", {}).get(c) for x in met) for c in classes},
            "train_s": _stats(m.get("timing_s", {}).get("training") for m in ms),
            "eval_ms_per_image": _stats(m.get("inference_ms_per_image") for m in ms),
        })
    ref = rows[0]["stats"]["AP"]
    for r in rows:
        ap = r["stats"]["AP"]
        r["delta_AP"] = ap[0] - ref[0]
        r["verdict"] = "baseline" if r is rows[0] else {None: "n/a (< 2 seeds)", True: "beyond the spread",
                                                         False: "within the spread"}[beyond_spread(ap, ref)]
    return rows


def add_complexity(rows: list[dict], runs: Sequence[dict], repeats: int = 10) -> list[dict]:
    """Add ``flops``, ``neck_flops``, ``params``, ``neck_params`` and ``latency_1img_ms`` to each row
    of :func:`neck_table`, from the neck's model built untrained with the runs' own parameters
    (preset, neck, neck_args, cfg_options, number of classes, image size): these do not depend on the weights.

    FLOPs: :func:`fpn_lab.mmdet_adapter.complexity.count_flops` (mmengine's counter, one fused
    multiply-add = one FLOP, one ``3 x S x S`` input, no post-processing). Latency:
    :func:`~fpn_lab.mmdet_adapter.complexity.latency_ms`, median of ``repeats`` single-image
    predictions with post-processing, in this process's torch threads. Returns ``rows``.
    """
    import torch

    from fpn_lab.mmdet_adapter.complexity import count_flops, latency_ms
    from fpn_lab.models.build import build_model

    by_label = {neck_label(m): m for m in runs}
    for r in rows:
        m = by_label[r["neck"]]
        p = m["params"]
        torch.manual_seed(0)
        model = build_model(p["selection"], num_classes=len(m["dataset"]["class_names"]), neck=p.get("neck", ""),
                            neck_args=p.get("neck_args") or None, cfg_options=p.get("cfg_options") or None)
        cost = count_flops(model, p["image_size"])
        r.update(params=cost["params"], neck_params=sum(q.numel() for q in model.neck.parameters()),
                 flops=cost["flops"], neck_flops=cost["neck_flops"], image_size=p["image_size"],
                 latency_1img_ms=latency_ms(model, p["image_size"], repeats=repeats), threads=torch.get_num_threads())
    return rows


def _ms(stat: tuple[float, float, int], nd: int = 3) -> str:
    mean, sd, n = stat
    if n == 0:
        return "n/a"
    return f"{mean:.{nd}f} ± {sd:.{nd}f}" if n > 1 else f"{mean:.{nd}f}"


def table_records(rows: Sequence[dict]) -> list[dict]:
    """:func:`neck_table` rows as flat, printable records (``mean ± sd`` strings), column names as
    in ``docs/necks.md``; for a pandas ``DataFrame``, markdown or HTML."""
    out = []
    for r in rows:
        rec = {"neck": r["neck"], "seeds": ", ".join(map(str, r["seeds"]))}
        rec.update({k.replace("_", " "): _ms(r["stats"][k]) for k in KEYS})
        rec.update({f"AP {c}": _ms(v) for c, v in r["per_class"].items()})
        rec["params (M)"] = f"{r['params'] / 1e6:.2f}" if r.get("params") else "n/a"
        rec["neck params (M)"] = f"{r['neck_params'] / 1e6:.2f}" if r.get("neck_params") else "n/a"
        if "flops" in r:
            rec[f"GFLOPs @{r['image_size']}"] = f"{r['flops'] / 1e9:.2f}"
            rec["neck GFLOPs"] = f"{r['neck_flops'] / 1e9:.2f}"
            rec[f"latency ms (1 image, {r['threads']} threads)"] = f"{r['latency_1img_ms']:.1f}"
        rec["eval ms/image"] = _ms(r["eval_ms_per_image"], 1)
        rec["training s"] = _ms(r["train_s"], 0)
        rec["AP vs baseline"] = "baseline" if r["verdict"] == "baseline" else f"{r['delta_AP']:+.3f}, {r['verdict']}"
        out.append(rec)
    return out


def markdown_table(records: Sequence[dict]) -> str:
    """``records`` (:func:`table_records`) as a GitHub markdown table."""
    head = list(records[0])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in head) + " |" for r in records]
    return "\n".join(lines)


def neck_figures(rows: Sequence[dict]) -> dict:
    """Matplotlib figures of :func:`neck_table` rows, by name: ``"ap"`` (AP, AP50 and AP by size
    with ± sd error bars per neck), ``"per_class"`` (per-class AP ± sd), and, when
    :func:`add_complexity` ran, ``"cost"`` (AP against GFLOPs and against single-image latency)."""
    import matplotlib.pyplot as plt
    import numpy as np

    figs = {}

    def bars(ax, groups, title):
        width = 0.8 / len(rows)
        x = np.arange(len(groups))
        for k, r in enumerate(rows):
            stats = [r["stats"].get(g) or r["per_class"].get(g) for g in groups]
            ax.bar(x + k * width, [0 if s[2] == 0 else s[0] for s in stats], width, yerr=[s[1] if s[2] else 0 for s in stats],
                   capsize=2, label=r["neck"])
        ax.set_xticks(x + 0.4 - width / 2, [g.replace("_", " ") for g in groups])
        ax.set(ylabel="COCO AP", title=title)
        ax.grid(axis="y", alpha=0.3)

    fig, ax = plt.subplots(figsize=(9, 3.6))
    bars(ax, list(KEYS), "AP per neck (mean ± sd over seeds)")
    ax.legend(fontsize=7, ncol=3)
    figs["ap"] = fig
    classes = list(rows[0]["per_class"])
    if classes:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        bars(ax, classes, "AP@[.5:.95] per class (mean ± sd over seeds)")
        ax.legend(fontsize=7, ncol=2)
        figs["per_class"] = fig
    if all("flops" in r for r in rows):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, key, xlabel in ((axes[0], "flops", f"GFLOPs at {rows[0]['image_size']} px"),
                                (axes[1], "latency_1img_ms", "ms per image (batch 1, CPU)")):
            for r in rows:
                x = r[key] / 1e9 if key == "flops" else r[key]
                ax.errorbar(x, r["stats"]["AP"][0], yerr=r["stats"]["AP"][1], fmt="o", capsize=3)
                ax.annotate(r["neck"], (x, r["stats"]["AP"][0]), fontsize=7, xytext=(4, 4), textcoords="offset points")
            ax.set(xlabel=xlabel, ylabel="AP@[.5:.95]")
            ax.grid(alpha=0.3)
        fig.suptitle("AP against cost, per neck")
        figs["cost"] = fig
    for fig in figs.values():
        fig.tight_layout()
    return figs
