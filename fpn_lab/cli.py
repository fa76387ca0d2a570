"""The fpn-lab command: run notebooks headless (one run, a batch with a comparison page, or an Optuna
study over parameters), export a trained model to ONNX, and list a notebook's parameters."""

from __future__ import annotations

import argparse
import sys

from fpn_lab.errors import FpnLabError


def _run(args) -> int:
    from fpn_lab.runner.papermill_run import run_notebook
    from fpn_lab.runner.params import parse_set

    overrides = {**parse_set(args.set), **({"track": args.track} if args.track else {})}
    kwargs = {"overrides": overrides, "runs_dir": args.runs_dir, "kernel": args.kernel,
              "timeout": args.timeout, "hide_input": args.hide_input, "run_dir": args.run_dir, "nproc": args.nproc}
    if args.notebook:
        kwargs["notebook"] = args.notebook
    elif args.params:  # compare_necks*.yaml: the neck comparison, as in a batch
        from pathlib import Path

        from fpn_lab.runner.batch import params_notebook

        kwargs["notebook"] = params_notebook(Path(args.params))
    run_dir, ok = run_notebook(args.params, **kwargs)
    return 0 if ok and _gates_pass(run_dir, args.min) else 1


def _gates_pass(run_dir, items) -> bool:
    import json

    from fpn_lab.runner.batch import parse_gates

    metrics = json.loads((run_dir / "metrics.json").read_text()).get("metrics", {})
    ok = True
    for key, floor in parse_gates(items).items():
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or value < floor:
            print(f"[fpn-lab] gate failed: {key}={value} < {floor}", flush=True)
            ok = False
    return ok


def _batch(args) -> int:
    from fpn_lab.runner.batch import parse_gates, run_batch

    overrides = [*(args.set or []), *([f"track={args.track}"] if args.track else [])]
    _, code = run_batch(args.params, jobs=args.jobs, name=args.name, overrides=overrides, runs_dir=args.runs_dir,
                        gates=parse_gates(args.min), timeout=args.timeout)
    return code


def _export(args) -> int:
    from pathlib import Path

    from fpn_lab.export import export_file

    out, check = export_file(Path(args.source), output=Path(args.output) if args.output else None, opset=args.opset,
                             dynamic_batch=args.dynamic_batch)
    print(f"[fpn-lab] exported {out} ({out.stat().st_size / 1e6:.1f} MB); onnxruntime against PyTorch on a test input: "
          f"largest difference {check:.2e}")
    return 0


def _tune(args) -> int:
    from fpn_lab.runner.params import parse_set
    from fpn_lab.runner.tune import tune

    study_dir = tune(args.space, trials=args.trials, storage=args.storage, study_name=args.study,
                     overrides=parse_set(args.set), runs_dir=args.runs_dir)
    return 0 if (study_dir / "summary.json").exists() else 1


def _params(args) -> int:
    from fpn_lab.runner.paths import project_path
    from fpn_lab.runner.params import notebook_parameters

    for name, info in notebook_parameters(project_path(args.notebook)).items():
        print(f"{name:22s} {info['type']:6s} default {info['default']!r}  {info['help']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fpn-lab`` command's parser: sub-commands ``run``, ``batch``, ``tune``, ``export`` and ``params``
    (the documentation's CLI reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fpn-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a notebook headless with a params YAML into runs/<name>/")
    run.add_argument("params", nargs="?", help="params YAML (empty file = notebook defaults)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (repeatable)")
    run.add_argument("--notebook", help="notebook to run (default: notebooks/compare_necks.ipynb for compare_necks*.yaml, "
                     "otherwise notebooks/getting_started.ipynb)")
    run.add_argument("--runs-dir", default="runs", help="folder for a new runs/<run_name or timestamp-preset>/")
    run.add_argument("--run-dir", help="run into exactly this folder, which must be new or empty (fpn-lab batch "
                     "uses it); --runs-dir and run_name then do not choose the folder")
    run.add_argument("--kernel", default="fpn-lab", help="Jupyter kernel name (default fpn-lab)")
    run.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    run.add_argument("--hide-input", action="store_true", help="render the HTML without code cells' input")
    run.add_argument("--track", choices=["none", "tensorboard", "mlflow"],
                     help="log the run to TensorBoard or MLflow (the notebook's track parameter)")
    run.add_argument("--min", action="append", metavar="KEY=VALUE",
                     help="regression gate on metrics.json, e.g. --min AP50=0.7: exit 1 when below")
    run.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="train in N processes on this machine with torchrun (DDP; docs/distributed.md)")
    run.set_defaults(func=_run)
    bat = sub.add_parser("batch", help="run several params files, then write a comparison page and CSV")
    bat.add_argument("params", nargs="+", help="params YAML files (one run each, named after the file)")
    bat.add_argument("--jobs", type=int, default=1, help="runs at a time; each gets cores/jobs threads")
    bat.add_argument("--name", help="batch folder name under --runs-dir (default batch-<timestamp>)")
    bat.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter in every run")
    bat.add_argument("--min", action="append", metavar="KEY=VALUE",
                     help="regression gate, e.g. --min AP50=0.7: exit 1 when a run falls below")
    bat.add_argument("--runs-dir", default="runs", help="folder for the batch folder (default runs)")
    bat.add_argument("--timeout", type=float, default=None, help="per-run timeout in seconds")
    bat.add_argument("--track", choices=["none", "tensorboard", "mlflow"], help="log every run to TensorBoard or MLflow")
    bat.set_defaults(func=_batch)
    tun = sub.add_parser("tune", help="search notebook parameters with Optuna, each trial a notebook run")
    tun.add_argument("space", help="search space YAML (base params, metric, direction, pruner, space)")
    tun.add_argument("--trials", type=int, required=True, help="finished trials the study should have (it resumes)")
    tun.add_argument("--storage", help="Optuna database URL (sqlite:///study.db) or journal file; default "
                     "runs/tune-<study>/study.journal")
    tun.add_argument("--study", help="study name (default: the space file's name); its folder is runs/tune-<study>")
    tun.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter in every trial")
    tun.add_argument("--runs-dir", default="runs", help="folder for the study folder (default runs)")
    tun.set_defaults(func=_tune)
    exp = sub.add_parser("export", help="export a trained model (run folder or checkpoint) to ONNX")
    exp.add_argument("source", help="a run folder (its model.pth) or an fpn_lab checkpoint")
    exp.add_argument("--format", choices=["onnx"], default="onnx", help="the only format: ONNX (onnxruntime)")
    exp.add_argument("--opset", type=int, default=19, help="ONNX opset (>= 19, the first with DeformConv)")
    exp.add_argument("--dynamic-batch", action="store_true", help="let the batch size vary (default: 1 image per run)")
    exp.add_argument("--output", help="the .onnx file (default: model.onnx beside the checkpoint)")
    exp.set_defaults(func=_export)
    par = sub.add_parser("params", help="list a notebook's parameters with types and defaults")
    par.add_argument("notebook", nargs="?", default="notebooks/getting_started.ipynb")
    par.set_defaults(func=_params)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FpnLabError as e:
        print(f"fpn-lab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
