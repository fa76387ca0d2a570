"""One process of a notebook run under torchrun, and the launcher ``fpn-lab run --nproc N`` uses.

Every process executes the same notebook with papermill (the code path of a one-process run: no
second training script); the notebook's :meth:`~fpn_lab.runner.context.Run.start` joins the
process group torchrun describes (:mod:`fpn_lab.distributed`). Rank 0's executed notebook and
papermill log are the run's (``<notebook>.ipynb``, ``run.log``); each process also leaves
``ranks/rank<k>.json`` (status, error with the failing cell, host, times) and ``ranks/rank<k>.log``
(papermill's log; rank 0's is ``run.log``), and on failure its partial notebook
``ranks/rank<k>.ipynb``.

Several machines (torchrun on each, the same run folder path on each; rank 0's machine gets the
files)::

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 2 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m fpn_lab.runner.worker params/demo.yaml --run-dir runs/demo-2x2

Rank 0 then renders the HTML and writes ``metrics.json`` itself (``--no-finish`` leaves that to a
launcher, as :func:`launch` does, which knows every process's outcome).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from fpn_lab.errors import FpnLabError, ParamsError
from fpn_lab.runner.paths import display_path, project_path, write_json_atomic

RANKS_DIR = "ranks"


class _Terminated(Exception):
    """torchrun stopped this process (SIGTERM), normally because another process failed."""


def _on_sigterm(signum, frame):
    raise _Terminated("stopped by torchrun (SIGTERM), after another process failed or the launcher was interrupted")


def run_rank(notebook: Path, run_dir: Path, params: dict, *, kernel: str, timeout: float | None, finish: bool,
             hide_input: bool = False) -> bool:
    """Execute ``notebook`` as this process's share of the run (rank from torchrun's ``RANK``);
    write ``ranks/rank<k>.json``. Rank 0 with ``finish`` renders and writes ``metrics.json``
    (:func:`~fpn_lab.runner.execute.finish_run`). Returns whether this process succeeded."""
    from fpn_lab.runner.execute import execute, failure_record, finish_run

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    ranks = run_dir / RANKS_DIR
    ranks.mkdir(parents=True, exist_ok=True)
    main = rank == 0
    out_nb = run_dir / notebook.name if main else ranks / f"rank{rank}.ipynb"
    log_file = run_dir / "run.log" if main else ranks / f"rank{rank}.log"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        ok, error = execute(notebook, out_nb, params, log_file, kernel=kernel, timeout=timeout, echo=main)
    except _Terminated as e:
        ok, error = False, e
    status = {"rank": rank, "world_size": world, "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
              "host": socket.gethostname(), "pid": os.getpid(), "status": "ok" if ok else "failed",
              "started_at": started, "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "ended_s": time.time(), "notebook": display_path(out_nb), "log": display_path(log_file)}
    if not ok:
        status["error"] = {**failure_record(error), "rank": rank}
        status["terminated"] = isinstance(error, _Terminated)
    if ok and not main:
        out_nb.unlink(missing_ok=True)  # rank 0's notebook is the run's; keep the others' only to debug a failure
        status["notebook"] = None
    write_json_atomic(ranks / f"rank{rank}.json", status)
    if main and finish:
        from fpn_lab.runner.params import notebook_parameters

        spec = notebook_parameters(notebook)
        ok = finish_run(run_dir, notebook, ok, status.get("error"), {**{k: v["default"] for k, v in spec.items()},
                                                                     **params}, hide_input=hide_input) and ok
    return ok


def root_cause(run_dir: Path, world: int, returncode: int) -> dict | None:
    """The error that failed a run, from ``ranks/rank<k>.json``: the earliest failure of a process
    not stopped by torchrun (a process whose peer died fails too, later, in a collective), or one
    naming the processes that left no report (killed: out of memory, a signal). ``None`` when
    every process reported success."""
    reports, missing = {}, []
    for k in range(world):
        f = run_dir / RANKS_DIR / f"rank{k}.json"
        try:
            reports[k] = json.loads(f.read_text())
        except (OSError, ValueError):
            missing.append(k)
    failed = [r for r in reports.values() if r.get("status") != "ok"]
    if not failed and not missing:
        return None if returncode == 0 else {"ename": "TorchrunError", "rank": None,
                                             "evalue": f"torchrun exited with {returncode} although every process "
                                                       "reported success"}
    own = [r for r in failed if not r.get("terminated")] or failed
    if own:
        first = min(own, key=lambda r: r.get("ended_s", float("inf")))
        err = dict(first.get("error") or {})
        others = sorted(r["rank"] for r in failed if r is not first)
        if others or missing:
            err["evalue"] = (f"{err.get('evalue')} (processes {others + missing} failed or stopped after it; "
                             f"see {RANKS_DIR}/rank<k>.json)")
        return err
    return {"ename": "ProcessLost", "rank": missing[0],
            "evalue": f"processes {missing} ended without a report (killed: out of memory or a signal?); torchrun exit "
                      f"code {returncode}"}


def launch(notebook: Path, run_dir: Path, params: dict, nproc: int, *, kernel: str, timeout: float | None = None,
           echo: bool = True) -> tuple[bool, dict | None]:
    """Run ``notebook`` in ``nproc`` processes on this machine: ``torchrun --standalone`` with
    :func:`main` in each. Each process gets ``cores // nproc`` torch threads unless the
    ``num_threads`` parameter says otherwise (torchrun's own default is 1).

    Returns ``(ok, error)``, ``error`` being :func:`root_cause`'s (with the failing ``rank``)."""
    from fpn_lab.threads import usable_cores

    threads = params.get("num_threads") or max(1, usable_cores() // nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fpn_lab.runner.worker", "--run-dir", str(run_dir), "--notebook", str(notebook), "--kernel", kernel,
           "--params-json", json.dumps(params), "--no-finish"]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    (run_dir / RANKS_DIR).mkdir(parents=True, exist_ok=True)
    if echo:
        print(f"[fpn-lab] torchrun: {nproc} processes x {threads} threads", flush=True)
    with open(run_dir / RANKS_DIR / "torchrun.log", "w") if not echo else open(os.devnull, "w") as sink:
        out = None if echo else sink
        proc = subprocess.Popen(cmd, cwd=str(project_path(".")), env=env, stdout=out, stderr=out)
        previous = signal.getsignal(signal.SIGTERM)
        # a launcher stopped by SIGTERM (a timeout, a CI cancel) stops torchrun, which stops its workers
        signal.signal(signal.SIGTERM, lambda *_: _stop(proc))
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            _stop(proc, code=130)
        finally:
            signal.signal(signal.SIGTERM, previous)
    error = root_cause(run_dir, nproc, rc)
    return error is None, error


def _stop(proc, code: int = 143) -> None:
    """Stop torchrun (it stops its workers on SIGTERM), kill it after 60 s, and exit with ``code``."""
    import subprocess as sp

    proc.terminate()
    try:
        proc.wait(60)
    except sp.TimeoutExpired:
        proc.kill()
    raise SystemExit(code)


def main(argv=None) -> int:
    from fpn_lab.runner.params import load_params_file, notebook_parameters, parse_set, validate_params

    ap = argparse.ArgumentParser(prog="python -m fpn_lab.runner.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("params", nargs="?", help="params YAML (as fpn-lab run)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (repeatable)")
    ap.add_argument("--params-json", help="the parameters as JSON (the launcher's, already checked)")
    ap.add_argument("--run-dir", required=True, help="the run folder (the same path in every process)")
    ap.add_argument("--notebook", default="notebooks/getting_started.ipynb")
    ap.add_argument("--kernel", default="fpn-lab")
    ap.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--hide-input", action="store_true")
    ap.add_argument("--no-finish", action="store_true", help="leave the HTML and metrics.json to the launcher")
    args = ap.parse_args(argv)
    try:
        notebook = project_path(args.notebook)
        if not notebook.is_file():
            raise ParamsError(f"notebook not found: {notebook}.")
        if "RANK" not in os.environ:
            raise ParamsError("fpn_lab.runner.worker runs under torchrun (it reads RANK and WORLD_SIZE); use "
                              "`fpn-lab run PARAMS.yaml --nproc N`, or torchrun ... -m fpn_lab.runner.worker (docs/distributed.md).")
        params = json.loads(args.params_json) if args.params_json else {
            **(load_params_file(args.params) if args.params else {}), **parse_set(args.set)}
        spec = notebook_parameters(notebook)
        params, _ = validate_params(params, notebook, spec=spec)
        run_dir = project_path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        params["run_dir"] = display_path(run_dir)
        if "interactive" in spec:
            params["interactive"] = False
    except FpnLabError as e:
        print(f"fpn_lab.runner.worker: error: {e}", file=sys.stderr)
        return 2
    ok = run_rank(notebook, run_dir, params, kernel=args.kernel, timeout=args.timeout, finish=not args.no_finish,
                  hide_input=args.hide_input)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
