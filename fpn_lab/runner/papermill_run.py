"""Headless runs: papermill executes a notebook into ``runs/<name>/``, then nbconvert renders it.

A run folder holds the executed notebook, its self-contained HTML, ``metrics.json``,
``predictions.json``, the checkpoint and ``run.log``. A failed run still leaves the partial
notebook, its HTML and the log, and its ``metrics.json`` says ``failed`` with the failing cell.

The folder is ``runs_dir/<run_name or timestamp-preset>`` (``-2``, ``-3``... appended rather than
reuse a folder), or exactly ``run_dir`` when the caller names one (``fpn-lab run --run-dir``), which
must be new or empty: ``fpn-lab batch`` names each run's folder so, and reads its results from there
whatever other runs write next to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fpn_lab.errors import ParamsError
from fpn_lab.models.registry import get_preset
from fpn_lab.runner.execute import KERNEL_NAME, check_kernel, execute, finish_run
from fpn_lab.runner.params import load_params_file, notebook_parameters, validate_params
from fpn_lab.runner.paths import default_run_name, display_path, project_path, unique_run_dir

DEFAULT_NOTEBOOK = "notebooks/getting_started.ipynb"
log = logging.getLogger("fpn_lab.runner")


def claim_run_dir(path: str | Path) -> Path:
    """Make ``path`` the run folder: created (with its parents) when missing; an existing folder
    must be empty, so a run never mixes its files with another run's.

    Raises:
        ParamsError: ``path`` is a file or a folder with files in it.
    """
    run_dir = project_path(path)
    try:
        run_dir.mkdir(parents=True)
    except NotADirectoryError:
        raise ParamsError(f"run folder {display_path(run_dir)}: a folder above it is a file; name a folder "
                          "whose parents are folders (or new).") from None
    except FileExistsError:
        if not run_dir.is_dir() or any(run_dir.iterdir()):
            what = "a file" if not run_dir.is_dir() else f"a folder holding {sorted(p.name for p in run_dir.iterdir())[:5]}"
            raise ParamsError(f"run folder {display_path(run_dir)} is {what}; a run folder given with --run-dir (or the "
                              "run_dir parameter) must be new or empty. Name another folder, or leave --run-dir out "
                              "to get a new runs/<name>/ folder.") from None
    return run_dir


def run_notebook(params_file: str | Path | None = None, *, overrides: dict | None = None,
                 notebook: str | Path = DEFAULT_NOTEBOOK, runs_dir: str | Path = "runs", kernel: str = KERNEL_NAME,
                 timeout: float | None = None, echo: bool = True, hide_input: bool = False,
                 run_dir: str | Path | None = None, nproc: int = 1) -> tuple[Path, bool]:
    """Execute ``notebook`` with the parameters of ``params_file`` (plus ``overrides``).

    The run goes into ``run_dir`` when given (or the ``run_dir`` parameter is set), a folder that
    must be new or empty (:func:`claim_run_dir`); otherwise into a new ``runs_dir/<run_name>``
    (default ``<timestamp>-<preset>``), never an existing folder.

    ``nproc`` > 1 runs the notebook in that many processes under torchrun
    (:func:`fpn_lab.runner.worker.launch`): the same cells in every process, one process group
    (:mod:`fpn_lab.distributed`); rank 0 writes the run folder.

    Returns ``(run_dir, ok)``. Parameter, notebook and kernel problems raise
    :class:`~fpn_lab.errors.ParamsError` before anything runs; a failure inside the notebook
    returns ``ok=False`` after writing the partial notebook, its HTML and a ``failed`` metrics.json
    (with the failing process's ``rank`` under torchrun).
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ParamsError(f"nproc must be a positive int (processes on this machine); got {nproc!r}.")
    notebook = project_path(notebook)
    if not notebook.is_file():
        raise ParamsError(f"notebook not found: {notebook}.")
    params = load_params_file(params_file) if params_file else {}
    params.update(overrides or {})
    spec = notebook_parameters(notebook)
    params, notes = validate_params(params, notebook, spec=spec)
    check_kernel(kernel)
    check_device_params({**{k: v["default"] for k, v in spec.items()}, **params}, nproc)
    for note in notes:
        log.warning(note)
    selection = params.get("selection", spec.get("selection", {}).get("default"))
    name = params.get("run_name") or default_run_name(get_preset(selection).name if selection is not None else "run")
    run_dir = run_dir or params.get("run_dir")
    run_dir = claim_run_dir(run_dir) if run_dir else unique_run_dir(runs_dir, name)
    params["run_dir"] = display_path(run_dir)
    if "interactive" in spec:
        params["interactive"] = False  # no one clicks widgets in a headless run: `selection` decides
    out_nb = run_dir / notebook.name
    if echo:
        print(f"[fpn-lab] running {notebook.name} -> {run_dir}" + (f" in {nproc} processes" if nproc > 1 else ""),
              flush=True)
    if nproc > 1:
        from fpn_lab.runner.worker import launch

        ok, error = launch(notebook, run_dir, params, nproc, kernel=kernel, timeout=timeout, echo=echo)
    else:
        ok, error = execute(notebook, out_nb, params, run_dir / "run.log", kernel=kernel, timeout=timeout, echo=echo)
    ok = finish_run(run_dir, notebook, ok, error, {**{k: v["default"] for k, v in spec.items()}, **params},
                    hide_input=hide_input, echo=echo)
    return run_dir, ok


def check_device_params(params: dict, nproc: int = 1) -> None:
    """The checks that need this machine, before a kernel starts: ``device`` resolved here
    (:func:`~fpn_lab.device.resolve_device`: a GPU asked for but absent), ``amp`` and ``sync_bn``
    against it, and ``nproc``: one process per usable core on the CPU
    (:func:`~fpn_lab.threads.usable_cores`; more would only wait for each other, and each holds a
    kernel with torch and mmdet, about 1 GB), one per GPU on CUDA.

    Raises:
        ParamsError: naming what was asked and what there is.
    """
    from fpn_lab.device import check_amp, resolve_device
    from fpn_lab.threads import usable_cores

    if "device" not in params:  # a notebook without the parameter (compare_necks)
        return
    resolved = resolve_device(params["device"])
    check_amp(params.get("amp", False), resolved)
    if params.get("sync_bn") and not resolved.startswith("cuda"):
        raise ParamsError(f"sync_bn: true needs a CUDA device (torch's SyncBatchNorm has no CPU implementation); device "
                          f"{params['device']!r} is {resolved!r} here. Set sync_bn: false.")
    if nproc <= 1:
        return
    if resolved.startswith("cuda"):
        import torch

        have, what = torch.cuda.device_count(), "GPU(s)"
    else:
        have, what = usable_cores(), "usable CPU core(s)"
    if nproc > have:
        raise ParamsError(f"--nproc {nproc}: this machine has {have} {what} (device {resolved}), and each process needs "
                          f"one of its own; use --nproc {have} or fewer (several machines: docs/distributed.md).")
