"""Headless runs: papermill executes a notebook into ``runs/<name>/``, then nbconvert renders it.

A run folder holds the executed notebook, its self-contained HTML, ``metrics.json``,
``predictions.json``, the checkpoint and ``run.log``. A failed run still leaves the partial
notebook, its HTML and the log, and its ``metrics.json`` says ``failed`` with the failing cell.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from fpn_lab.errors import ParamsError
from fpn_lab.runner.context import default_run_name, display_path, project_path, unique_run_dir, write_json_atomic
from fpn_lab.runner.params import load_params_file, validate_params

KERNEL_NAME = "fpn-lab"
DEFAULT_NOTEBOOK = "notebooks/getting_started.ipynb"
log = logging.getLogger("fpn_lab.runner")


def check_kernel(name: str) -> None:
    """Raise :class:`ParamsError` if the Jupyter kernel ``name`` is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        have = sorted(KernelSpecManager().find_kernel_specs())
        raise ParamsError(f"Jupyter kernel {name!r} is not installed (installed: {have}). Run `make setup` "
                          "(scripts/setup.sh), which registers it, or pass --kernel NAME.") from None


TEMPLATES = Path(__file__).with_name("templates")


def render_html(notebook: Path, html: Path, *, hide_input: bool = False) -> Path:
    """Render an executed notebook to one self-contained HTML file (written atomically).

    nbconvert's ``lab`` template minus its CDN scripts (``templates/fpn_lab_offline``), figures
    embedded as ``data:`` URIs. ``hide_input`` drops the code cells' input (outputs stay, so the
    injected parameters remain visible through the run summary).
    """
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="fpn_lab_offline", extra_template_basedirs=[str(TEMPLATES)],
                            embed_images=True, exclude_input=hide_input, exclude_input_prompt=hide_input)
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    tmp = html.with_name(html.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(html)
    return html


def _failure(error: BaseException) -> dict:
    info = {"ename": getattr(error, "ename", type(error).__name__), "evalue": getattr(error, "evalue", str(error))}
    if getattr(error, "cell_index", None) is not None:
        info["cell_index"] = error.cell_index
        info["exec_count"] = getattr(error, "exec_count", None)
    if type(error).__name__ == "DeadKernelError":
        info["ename"], info["evalue"] = "DeadKernelError", f"the kernel died: {error}"
    return info


def run_notebook(params_file: str | Path | None = None, *, overrides: dict | None = None,
                 notebook: str | Path = DEFAULT_NOTEBOOK, runs_dir: str | Path = "runs", kernel: str = KERNEL_NAME,
                 timeout: float | None = None, echo: bool = True, hide_input: bool = False) -> tuple[Path, bool]:
    """Execute ``notebook`` with the parameters of ``params_file`` (plus ``overrides``).

    Returns ``(run_dir, ok)``. Parameter, notebook and kernel problems raise
    :class:`~fpn_lab.errors.ParamsError` before anything runs; a failure inside the notebook
    returns ``ok=False`` after writing the partial notebook, its HTML and a ``failed`` metrics.json.
    """
    import papermill as pm

    notebook = project_path(notebook)
    if not notebook.is_file():
        raise ParamsError(f"notebook not found: {notebook}.")
    params = load_params_file(params_file) if params_file else {}
    params.update(overrides or {})
    params, notes = validate_params(params, notebook)
    check_kernel(kernel)
    for note in notes:
        log.warning(note)
    name = params.get("run_name") or default_run_name(str(params.get("selection", "run")))
    run_dir = unique_run_dir(runs_dir, name)
    params["run_dir"] = display_path(run_dir)
    out_nb = run_dir / notebook.name
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pm_log = logging.getLogger("papermill")
    pm_log.addHandler(handler)
    pm_log.setLevel(logging.INFO)
    if echo:
        print(f"[fpn-lab] running {notebook.name} -> {run_dir}", flush=True)
    ok, error = True, None
    try:
        pm.execute_notebook(str(notebook), str(out_nb), parameters=params, kernel_name=kernel, log_output=True,
                            progress_bar=False, cwd=str(project_path(".")), execution_timeout=timeout,
                            stdout_file=sys.stdout if echo else None, stderr_file=sys.stderr if echo else None)
    except Exception as e:  # PapermillExecutionError, DeadKernelError, timeouts: the run failed
        ok, error = False, e
        log.error("notebook failed: %s", e)
    finally:
        pm_log.removeHandler(handler)
        handler.close()
    t = time.perf_counter()
    html = run_dir / (notebook.stem + ".html")
    if out_nb.exists():
        try:
            render_html(out_nb, html, hide_input=hide_input)
        except Exception as e:  # rendering failure is a run failure, not a crash of the runner
            ok, error = False, error or e
    metrics_path = run_dir / "metrics.json"
    if ok and metrics_path.exists():
        import json

        data = json.loads(metrics_path.read_text())
        data.setdefault("timing_s", {})["rendering"] = round(time.perf_counter() - t, 2)
        write_json_atomic(metrics_path, data)
    else:
        ok = False
        error = error or RuntimeError("the notebook finished without writing metrics.json")
        write_json_atomic(metrics_path, {"schema_version": 1, "status": "failed", "params": params,
                                         "error": _failure(error)})
    if echo:
        status = "finished" if ok else f"FAILED ({_failure(error)['ename']}: {str(_failure(error)['evalue'])[:300]})"
        print(f"[fpn-lab] {status}\n  notebook: {out_nb}\n  html:     {html}\n  metrics:  {metrics_path}\n"
              f"  log:      {run_dir / 'run.log'}", flush=True)
    return run_dir, ok
