"""Batches of headless runs and their comparison page.

``fpn-lab batch a.yaml b.yaml ...`` runs each params file as its own ``fpn-lab run`` process into
``runs/<batch>/<params-file-stem>/`` (continuing past failures), then writes
``runs/<batch>/comparison.csv`` and a self-contained ``runs/<batch>/index.html``: one row per run,
plots, links to each rendered notebook, failed runs with the failing step, and rows whose data,
split, seed or image size differ from the batch's majority flagged as not comparable. A batch
whose runs differ only in the neck and seed also gets the per-neck table (mean ± sd over seeds,
:mod:`fpn_lab.runner.compare`).

Each run is told its folder (``fpn-lab run --run-dir``) and its row is read from there, so runs
going at the same time (``--jobs``) never take each other's results.
"""

from __future__ import annotations

import importlib.util

import base64
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from fpn_lab.errors import ParamsError
from fpn_lab.runner.paths import project_path, unique_run_dir
from fpn_lab.runner.params import load_params_file, parse_set, validate_params
from fpn_lab.threads import usable_cores

COLUMNS = ["run", "status", "preset", "neck", "image_size", "epochs", "seed", "data_dir", "split", "AP", "AP50",
           "AP_small", "AP_medium", "AP_large", "best_threshold", "train_s", "params", "inference_ms_per_image",
           "comparable", "failed_step", "error"]


def parse_gates(items) -> dict[str, float]:
    """``["AP50=0.7"]`` -> ``{"AP50": 0.7}`` (CLI ``--min``)."""
    gates = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        try:
            gates[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ParamsError(f"--min takes KEY=NUMBER such as AP50=0.7; got {item!r}.")
    return gates


def params_notebook(params_file: Path) -> Path:
    """The notebook a params file is for: ``compare_necks*.yaml`` the neck comparison, any other
    file the getting-started notebook."""
    name = "compare_necks.ipynb" if params_file.stem.startswith("compare_necks") else "getting_started.ipynb"
    return project_path("notebooks") / name


def _run_one(params: Path, batch_dir: Path, overrides: list[str], threads: int,
             timeout: float | None) -> tuple[Path | None, int | None]:
    """Run ``params`` as ``fpn-lab run --run-dir batch_dir/<stem>``; return that folder (``None``
    when the run never made it) and the command's exit code (``None`` when it timed out).

    The folder is named here, not found afterwards: with ``--jobs`` above 1 other runs create
    folders in ``batch_dir`` at the same time. ``batch_dir`` is new and stems are distinct, so
    the folder is free.
    """
    run_dir = batch_dir / params.stem
    cmd = [sys.executable, "-m", "fpn_lab.cli", "run", str(params), "--run-dir", str(run_dir),
           "--notebook", str(params_notebook(params)), "--set", f"run_name={params.stem}"]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = batch_dir / f"{params.stem}.batch.log"
    with open(log, "w") as fh:
        try:
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=project_path("."),
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n[fpn-lab batch] timed out after {timeout} s\n")
            code = None
    return (run_dir if run_dir.is_dir() else None), code


def _failed_step(run_dir: Path, cell_index) -> str:
    """The markdown heading above the failing cell of the executed notebook."""
    try:
        cells = json.loads(next(run_dir.glob("*.ipynb")).read_text())["cells"]
    except (StopIteration, OSError, ValueError):
        return ""
    heading = ""
    for cell in cells[: (cell_index or 0) + 1]:
        if cell["cell_type"] == "markdown":
            src = "".join(cell["source"]).strip()
            if src.startswith("#"):
                heading = src.splitlines()[0].lstrip("# ")
    return heading


def _row(name: str, run_dir: Path | None, exit_code: int | None = 0) -> dict:
    """The comparison row of one run: from its ``metrics.json``, failed unless that says ok and
    the run's command exited 0 (a run killed after writing its metrics, or timed out, failed)."""
    row = dict.fromkeys(COLUMNS, "")
    row["run"] = name
    m = {}
    if run_dir is not None and (run_dir / "metrics.json").is_file():
        m = json.loads((run_dir / "metrics.json").read_text())
    if m.get("status") == "ok" and exit_code != 0:
        how = "timed out" if exit_code is None else f"exited with code {exit_code}"
        m = {**m, "status": "failed", "error": {"ename": "RunFailed", "evalue": f"the run {how} although its "
                                                "metrics.json says ok; see its .batch.log"}}
    p = m.get("params", {})
    row.update(status=m.get("status", "failed"), preset=m.get("preset", p.get("selection", "")),
               image_size=p.get("image_size", ""), epochs=p.get("epochs", ""), seed=p.get("seed", ""),
               data_dir=p.get("data_dir", ""), split=(m.get("dataset", {}).get("split", {}) or {}).get("name", p.get("split", "")))
    if row["status"] == "ok":
        met = m.get("metrics", {})
        row.update(AP=met.get("AP"), AP50=met.get("AP50"), train_s=m.get("timing_s", {}).get("training"),
                   params=m.get("model", {}).get("params"), neck=m.get("model", {}).get("neck"),
                   inference_ms_per_image=m.get("inference_ms_per_image"))
        row["per_class_AP"] = met.get("per_class_AP", {})
        analysis = m.get("analysis") or {}
        for size, v in (analysis.get("by_size") or {}).items():  # None: no boxes of that size (COCO's -1)
            row[f"AP_{size}"] = v.get("AP")
        row["best_threshold"] = (analysis.get("best_threshold") or {}).get("score")
        row["_curves"] = analysis.get("curves")
        row["_metrics"] = {**m, "_source": str(run_dir / "metrics.json")}
    else:
        err = m.get("error", {"ename": "NoRun", "evalue": "the run did not start; see its .batch.log"})
        row["error"] = f"{err.get('ename')}: {str(err.get('evalue'))[:300]}"
        row["failed_step"] = (_failed_step(run_dir, err.get("cell_index")) if run_dir else "") or "start"
    row["_dir"] = run_dir
    return row


def _flag_comparable(rows: list[dict]) -> None:
    keys = ("data_dir", "split", "seed", "image_size")
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return
    majority = Counter(tuple(r[k] for k in keys) for r in ok).most_common(1)[0][0]
    for r in ok:
        diff = [k for k, v in zip(keys, majority) if r[k] != v]
        r["comparable"] = "yes" if not diff else "no: " + ", ".join(f"{k}={r[k]!r}" for k in diff)


def _plots(rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["AP"] is not None]
    if not ok:
        return []
    figs = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in ok:
        ax.scatter(r["train_s"], r["AP"], s=40)
        ax.annotate(r["run"], (r["train_s"], r["AP"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="training time (s)", ylabel="COCO AP@[.5:.95]", title="AP against training time")
    ax.grid(alpha=0.3)
    figs.append(fig)
    classes = sorted({c for r in ok for c in r.get("per_class_AP", {})})
    if classes:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.8 / len(ok)
        for k, r in enumerate(ok):
            vals = [r["per_class_AP"].get(c) or 0.0 for c in classes]
            ax.bar([i + k * width for i in range(len(classes))], vals, width, label=r["run"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], classes)
        ax.set(ylabel="AP@[.5:.95]", title="per-class AP")
        ax.legend(fontsize=8)
        figs.append(fig)
    curved = [r for r in ok if r.get("_curves")]
    if curved:
        classes = list(curved[0]["_curves"]["pr_precision"])
        fig, axes = plt.subplots(1, len(classes), figsize=(3.6 * len(classes), 3.4), squeeze=False)
        for ax, c in zip(axes[0], classes):
            for r in curved:
                pr = r["_curves"]["pr_precision"].get(c)
                if pr:
                    ax.plot(r["_curves"]["pr_recall"], [float("nan") if v is None else v for v in pr], label=r["run"])
            ax.set(title=f"{c}: precision-recall, IoU 0.5", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        figs.append(fig)
    out = []
    for fig in figs:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def neck_section(rows: list[dict]) -> tuple[list[dict], str]:
    """The per-neck table of a batch (:func:`fpn_lab.runner.compare.table_records`) when its ok runs
    use two or more necks; otherwise ``[]``. The second item says why a batch with several necks
    gets no table (its runs differ in more than the neck and seed), shown on the page."""
    from fpn_lab.runner.compare import neck_label, neck_table, table_records

    runs = [r["_metrics"] for r in rows if r["status"] == "ok" and r.get("_metrics")]
    if len({neck_label(m) for m in runs}) < 2:
        return [], ""
    try:
        return table_records(neck_table(runs)), ""
    except ParamsError as e:  # shown on the page instead of the table
        return [], f"No per-neck table: {e}"


def write_report(batch_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    """Write ``comparison.csv`` and ``index.html`` (jinja2 template ``templates/comparison.html.j2``)."""
    import jinja2

    csv_path = batch_dir / "comparison.csv"
    with open(csv_path.with_suffix(".tmp"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS + ["per_class_AP"], extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "per_class_AP": json.dumps(r.get("per_class_AP") or {})})
    csv_path.with_suffix(".tmp").replace(csv_path)
    for r in rows:
        html = next(r["_dir"].glob("*.html"), None) if r["_dir"] else None
        r["link"] = html.relative_to(batch_dir).as_posix() if html else ""
        cm = r["_dir"] / "confusion_matrix.png" if r["_dir"] else None
        r["cm_link"] = cm.relative_to(batch_dir).as_posix() if cm and cm.is_file() else ""
    necks, necks_note = neck_section(rows)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True)
    page = env.get_template("comparison.html.j2").render(
        title=batch_dir.name, rows=rows, plots=_plots(rows), necks=necks, necks_note=necks_note,
        created=datetime.now().isoformat(timespec="seconds"),
        fmt=lambda v, nd=3: f"{v:.{nd}f}" if isinstance(v, float) else ("n/a" if v is None else v))
    index = batch_dir / "index.html"
    index.with_suffix(".tmp").write_text(page, encoding="utf-8")
    index.with_suffix(".tmp").replace(index)
    return csv_path, index


def run_batch(params_files, *, jobs: int = 1, name: str | None = None, overrides=(), runs_dir="runs",
              gates: dict | None = None, timeout: float | None = None, echo: bool = True) -> tuple[Path, int]:
    """Run every params file, write the comparison, apply ``gates``; returns ``(batch_dir, exit_code)``.

    Exit code 0 when every run succeeded and passed the gates, 1 otherwise.
    """
    files = [Path(p).resolve() for p in params_files]  # the runs start in the project root: never relative
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ParamsError(f"params file(s) not found: {missing}.")
    stems = Counter(p.stem for p in files)
    if any(n > 1 for n in stems.values()):
        clash = [str(p) for p in files if stems[p.stem] > 1]
        raise ParamsError(f"params files must have distinct names, each names its run folder; these share one: {clash}. "
                          "Rename or copy one of them.")
    if not isinstance(jobs, int) or jobs < 1:
        raise ParamsError(f"--jobs must be a positive int; got {jobs!r}.")
    batch_dir = unique_run_dir(runs_dir, name or f"batch-{datetime.now():%Y%m%d-%H%M%S}")
    threads = max(1, usable_cores() // jobs)  # the cores this process may use, shared by the jobs
    t0 = time.perf_counter()

    def one(p):
        if echo:
            print(f"[fpn-lab batch] start {p.stem} ({threads} threads) +{time.perf_counter() - t0:.0f}s", flush=True)
        try:  # bad parameters: a failed row at once, no kernel started
            params = validate_params({**load_params_file(p), **parse_set(overrides)}, params_notebook(p))[0]
        except ParamsError as e:
            row = _row(p.stem, None)
            row.update(error=f"ParamsError: {e}", failed_step="parameters (checked before the run)")
        else:
            run_dir, code = _run_one(p, batch_dir, list(overrides), threads, timeout)
            if code is None and run_dir is not None and params.get("track") == "mlflow":
                from fpn_lab.runner.tracking import end_unfinished_run

                end_unfinished_run(run_dir)  # killed on the timeout: its own runner could not end it
            row = _row(p.stem, run_dir, code)
        if echo:
            print(f"[fpn-lab batch] {row['status']:6s} {p.stem} AP={row['AP']} +{time.perf_counter() - t0:.0f}s", flush=True)
        return row

    tracked = []
    for p in files:
        try:
            tracked.append({**load_params_file(p), **parse_set(overrides)})
        except ParamsError:
            pass  # reported as that run's failed row below
    if any(v.get("track") == "mlflow" for v in tracked) and importlib.util.find_spec("mlflow") is not None:
        from fpn_lab.runner.tracking import prepare_store  # (without mlflow each run's row says which extra)

        try:
            prepare_store()  # once, before the runs: new SQLite stores race in their schema migration
        except Exception as e:
            raise ParamsError(f"track: mlflow: the MLflow store could not be opened or created ({type(e).__name__}: "
                              f"{str(e)[:300]}). Fix MLFLOW_TRACKING_URI, or run the batch without --track mlflow.") from e
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(one, files))
    _flag_comparable(rows)
    csv_path, index = write_report(batch_dir, rows)
    code = 0 if all(r["status"] == "ok" for r in rows) else 1
    for key, floor in (gates or {}).items():
        for r in rows:
            value = r.get(key)
            if r["status"] == "ok" and (not isinstance(value, (int, float)) or value < floor):
                code = 1
                if echo:
                    print(f"[fpn-lab batch] gate failed: {r['run']} {key}={value} < {floor}", flush=True)
    if echo:
        print(f"[fpn-lab batch] {sum(r['status'] == 'ok' for r in rows)}/{len(rows)} runs ok\n"
              f"  comparison: {index}\n  csv:        {csv_path}", flush=True)
    return batch_dir, code
