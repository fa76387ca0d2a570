"""Executing a notebook run and finishing its folder: papermill runs the notebook (the console shows
one line per cell), then the summary cell, the HTML and, on failure, ``metrics.json`` with
``status: failed``. Both the headless runner (:mod:`fpn_lab.runner.papermill_run`) and the torchrun
worker (:mod:`fpn_lab.runner.worker`) call it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

from fpn_lab.errors import ParamsError
from fpn_lab.runner.paths import project_path, write_json_atomic
from fpn_lab.runner.trial import PRUNED

log = logging.getLogger("fpn_lab.runner")

KERNEL_NAME = "fpn-lab"
def check_kernel(name: str) -> None:
    """Raise :class:`ParamsError` if the Jupyter kernel ``name`` is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        have = sorted(KernelSpecManager().find_kernel_specs())
        raise ParamsError(f"Jupyter kernel {name!r} is not installed (installed: {have}). Run `make setup` "
                          "(scripts/setup.sh), which registers it; in an environment made with pip, register its "
                          f"Python: python -m ipykernel install --sys-prefix --name {name}; or pass --kernel NAME.") from None


TEMPLATES = Path(__file__).with_name("templates")


def render_html(notebook: Path, html: Path, *, hide_input: bool = False) -> Path:
    """Render an executed notebook to one self-contained HTML file (written atomically).

    nbconvert's ``lab`` template minus its CDN scripts (``templates/fpn_lab_offline``), figures
    embedded as ``data:`` URIs. ``hide_input`` drops the code cells' input (outputs stay, so the
    injected parameters remain visible through the run summary). Outputs are made static first
    (:func:`static_outputs`): widgets, which need a live kernel, show their text form, and control
    characters are removed.
    """
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="fpn_lab_offline", extra_template_basedirs=[str(TEMPLATES)],
                            embed_images=True, exclude_input=hide_input, exclude_input_prompt=hide_input)
    body, _ = exporter.from_notebook_node(static_outputs(nbformat.read(str(notebook), as_version=4)))
    tmp = html.with_name(html.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(html)
    return html


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# C0 controls but tab, newline and carriage return, DEL, and ESC not starting an ANSI CSI
# sequence (``ESC [``, which nbconvert turns into colours)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]|\x1b(?!\[)")


def static_outputs(nb):
    """Make an executed notebook's outputs render without a kernel (changes ``nb`` in place, returns it).

    A widget output (``application/vnd.jupyter.widget-view+json``: the model picker, tqdm bars)
    has no state in a saved notebook and renders as a blank area: it is replaced by its
    ``text/plain`` form, or by a line saying a widget was there. Control characters in text
    outputs (NUL, a lone ESC, ...; ANSI colour sequences are kept for nbconvert) are removed,
    as they are invalid in HTML.
    """
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out and isinstance(out["text"], str):
                out["text"] = _CONTROL.sub("", out["text"])
            data = out.get("data")
            if not data:
                continue
            if WIDGET_MIME in data:
                del data[WIDGET_MIME]
                data.setdefault("text/plain", "[an interactive widget: open the notebook in Jupyter to use it]")
            for mime in ("text/plain", "text/html", "text/markdown"):
                if isinstance(data.get(mime), str):
                    data[mime] = _CONTROL.sub("", data[mime])
    return nb


def _headings(notebook: Path) -> dict[int, str]:
    """1-based cell number (as papermill counts them, with its injected-parameters cell) -> the
    markdown heading the cell sits under."""
    import nbformat

    cells = nbformat.read(str(notebook), as_version=4).cells
    out, heading, shift = {}, "", 0
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"):
            heading = cell.source.lstrip().splitlines()[0].lstrip("# ")
        if cell.cell_type == "code":
            out[i + 1 + shift] = heading
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            shift = 1
            out[i + 2] = heading + " (injected)"
    return out


class _Progress(logging.Handler):
    """Follows papermill's "Executing Cell N" lines: ``current`` is the 1-based number of the cell
    running (so a kernel that dies without an error message, killed for memory or on a timeout,
    still names its cell); with ``echo`` prints one line per code cell: elapsed time, cell number
    and the step it belongs to."""

    def __init__(self, notebook: Path, echo: bool = True):
        super().__init__(logging.INFO)
        self.headings, self.t0, self.echo = _headings(notebook), time.perf_counter(), echo
        self.last = max(self.headings, default=0)
        self.current: int | None = None

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Executing Cell"):
            n = int(msg.split()[2].strip("-"))
            self.current = n
            if n not in self.headings or not self.echo:
                return  # a markdown cell, or nothing to print
            elapsed = int(time.perf_counter() - self.t0)
            print(f"[fpn-lab {elapsed // 60:02d}:{elapsed % 60:02d}] cell {n}/{self.last}: "
                  f"{self.headings.get(n, '')}", file=sys.stderr, flush=True)


def add_summary_cell(notebook: Path, metrics: dict) -> None:
    """Insert a markdown summary (status, preset, key params, AP, AP50, times, peak memory, versions, commit)
    as the executed notebook's first cell (written atomically)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    p, m, t = metrics.get("params", {}), metrics.get("metrics", {}), metrics.get("timing_s", {})
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("n/a" if v is None else str(v))  # noqa: E731
    lines = [f"# Run summary: {metrics.get('status', '?').upper()}", "",
             "| | |", "| --- | --- |",
             f"| preset | `{metrics.get('preset', p.get('selection', '?'))}` |",
             f"| AP@[.5:.95] / AP50 | {fmt(m.get('AP'))} / {fmt(m.get('AP50'))} |"]
    for key in ("data_dir", "data_format", "split", "image_size", "batch_size", "epochs", "lr", "one_cycle", "opt", "ema",
                "no_aug_epochs", "seed", "neck", "pretrained", "weights", "channels_last"):
        if key in p:
            lines.append(f"| {key} | `{p[key]!r}` |")
    threads = metrics.get("threads")
    if isinstance(threads, dict):
        lines.append(f"| torch threads | {threads.get('count')} ({threads.get('reason')}) |")
    if t:
        lines.append("| time (s) | " + ", ".join(f"{k} {v}" for k, v in t.items()) + " |")
    if metrics.get("peak_rss_mb"):
        lines.append(f"| peak memory | {max(metrics['peak_rss_mb'].values()):.0f} MiB (kernel resident set) |")
    if metrics.get("error"):
        e = metrics["error"]
        lines.append(f"| error | cell {e.get('cell_index', '?')}: `{e.get('ename')}`: {str(e.get('evalue'))[:200]} |")
    versions = metrics.get("versions") or {}
    if versions:
        lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " |")
    if metrics.get("git_commit"):
        lines.append(f"| commit | `{metrics['git_commit'][:12]}` |")
    cell = nbformat.v4.new_markdown_cell("\n".join(lines))
    cell.metadata["tags"] = ["fpn-lab-summary"]
    nb.cells = [c for c in nb.cells if "fpn-lab-summary" not in c.get("metadata", {}).get("tags", [])]
    nb.cells.insert(0, cell)
    tmp = notebook.with_name(notebook.name + ".tmp")
    nbformat.write(nb, str(tmp))
    tmp.replace(notebook)


def failure_record(error) -> dict:
    """The ``error`` entry of a failed run's ``metrics.json``: ``ename``, ``evalue`` and, when known,
    the failing ``cell_index`` (0-based, papermill's) and ``exec_count``, from an exception (or a
    dict, copied as it is)."""
    if isinstance(error, dict):
        return dict(error)
    info = {"ename": getattr(error, "ename", type(error).__name__), "evalue": getattr(error, "evalue", str(error))}
    if getattr(error, "cell_index", None) is not None:
        info["cell_index"] = error.cell_index
        info["exec_count"] = getattr(error, "exec_count", None)
    elif getattr(error, "running_cell_index", None) is not None:  # the kernel died or timed out in that cell
        info["cell_index"] = error.running_cell_index
    if type(error).__name__ == "DeadKernelError":
        info["ename"], info["evalue"] = "DeadKernelError", f"the kernel died: {error}"
    return info


def execute(notebook: Path, out_nb: Path, params: dict, log_file: Path, *, kernel: str = KERNEL_NAME,
            timeout: float | None = None, echo: bool = True) -> tuple[bool, BaseException | None]:
    """Run ``notebook`` with papermill into ``out_nb`` (saved after every cell), papermill's log in
    ``log_file``; with ``echo``, the cells' output and one line per cell on the console.

    Returns ``(ok, error)``: the exception (PapermillExecutionError, DeadKernelError, a timeout) when
    a cell failed."""
    import papermill as pm

    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pm_log = logging.getLogger("papermill")
    pm_log.addHandler(handler)
    pm_log.setLevel(logging.INFO)
    progress = _Progress(notebook, echo)
    pm_log.addHandler(progress)
    ok, error = True, None
    try:
        pm.execute_notebook(str(notebook), str(out_nb), parameters=params, kernel_name=kernel, log_output=True,
                            progress_bar=False, cwd=str(project_path(".")), execution_timeout=timeout,
                            stdout_file=sys.stdout if echo else None, stderr_file=sys.stderr if echo else None)
    except Exception as e:  # PapermillExecutionError, DeadKernelError, timeouts: the run failed
        ok, error = False, e
        if getattr(e, "cell_index", None) is None and progress.current is not None:
            e.running_cell_index = progress.current - 1  # 0-based, as papermill's cell_index
        log.error("notebook failed: %s", e)
    finally:
        pm_log.removeHandler(handler)
        pm_log.removeHandler(progress)
        handler.close()
    return ok, error


def finish_run(run_dir: Path, notebook: Path, ok: bool, error, params: dict, *, hide_input: bool = False,
               echo: bool = True) -> bool:
    """After the notebook ran: check ``metrics.json``, put the summary cell on top of the executed
    notebook, render its HTML, and on failure write ``metrics.json`` with ``status: failed`` and
    the ``error`` (an exception, or a dict with ``ename``, ``evalue``, ``cell_index``, ``rank``);
    ``status: pruned`` instead when the error is Optuna's ``TrialPruned`` (a trial of ``fpn-lab tune``).
    Returns whether the run succeeded (rendering can still fail it)."""
    t = time.perf_counter()
    out_nb = run_dir / notebook.name
    html = run_dir / (notebook.stem + ".html")
    metrics_path = run_dir / "metrics.json"
    if ok and not metrics_path.exists():
        ok, error = False, RuntimeError("the notebook finished without writing metrics.json")
    data = json.loads(metrics_path.read_text()) if ok else {
        "schema_version": 1, "status": "failed", "params": params, "error": failure_record(error)}
    if not ok and data["error"].get("ename") == PRUNED:  # a trial of fpn-lab tune that Optuna's pruner stopped
        data["status"] = "pruned"
    if isinstance(data.get("error", {}).get("cell_index"), int) and notebook.is_file():
        data["error"].setdefault("step", _headings(notebook).get(data["error"]["cell_index"] + 1, ""))
    if out_nb.exists():
        try:
            if isinstance(data.get("error", {}).get("cell_index"), int):
                data["error"]["cell_index"] += 1  # point at the cell in the saved notebook, below the summary
            add_summary_cell(out_nb, data)
            render_html(out_nb, html, hide_input=hide_input)
        except Exception as e:  # rendering failure is a run failure, not a crash of the runner
            ok, error = False, e
            data = {**data, "status": "failed", "error": failure_record(e)}
    if ok:
        data.setdefault("timing_s", {})["rendering"] = round(time.perf_counter() - t, 2)
    elif params.get("track") == "mlflow":  # a killed kernel could not end its MLflow run
        from fpn_lab.runner.tracking import end_unfinished_run

        try:
            end_unfinished_run(run_dir)
        except Exception as e:  # the run failed already: say why its MLflow run may stay open, go on
            log.warning("could not end the MLflow run of %s: %s", run_dir, e)
    write_json_atomic(metrics_path, data)
    if echo:
        e = data.get("error") or {}
        where = f"process {e['rank']}: " if "rank" in e else ""
        cell = (f" in cell {e['cell_index']}" + (f" ({e['step']})" if e.get("step") else "")) if "cell_index" in e else ""
        status = ("finished" if ok else f"PRUNED by the study ({str(e.get('evalue'))[:200]})" if data["status"] == "pruned"
                  else f"FAILED ({where}{e.get('ename')}: {str(e.get('evalue'))[:800]}){cell}")
        print(f"[fpn-lab] {status}\n  notebook: {out_nb}\n  html:     {html}\n  metrics:  {metrics_path}\n"
              f"  log:      {run_dir / 'run.log'}", flush=True)
    return ok
