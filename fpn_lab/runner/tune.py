"""``fpn-lab tune``: a search over notebook parameters with Optuna, each trial a normal notebook run.

The search space is a YAML file::

    params: params/demo.yaml          # the base parameters of every trial (optional)
    notebook: notebooks/getting_started.ipynb   # optional, this is the default
    metric: AP                        # what the study optimises: a metrics.json metric (AP, AP50, ...)
                                      # or a per-epoch column (valid_loss); also what the pruner watches
    direction: maximize               # or minimize (default: minimize for names ending in "loss")
    pruner: median                    # Optuna's MedianPruner (default), or none
    seed: 0                           # the sampler's seed (TPE)
    space:
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      neck: {type: categorical, choices: [fpn, pafpn, bifpn]}
      epochs: {type: int, low: 2, high: 6}

Every key of ``space`` must be a parameter of the notebook; every categorical choice and both ends of
a range are validated as the notebook's parameters are, before anything runs.

The driver asks Optuna for a trial (ask-and-tell), runs the notebook with the trial's parameters
into ``runs/tune-<study>/trial-<number>/`` (:func:`~fpn_lab.runner.papermill_run.run_notebook`, the
same code path as ``fpn-lab run``), with the trial named in the kernel's environment
(:mod:`fpn_lab.runner.trial`), so that the run reports its per-epoch metric and can be pruned; then it
tells Optuna the run's final metric, or that it was pruned or failed. The study lives in ``--storage``
(a database URL, or a journal file: by default ``runs/tune-<study>/study.journal``), so a study whose
driver was killed resumes where it stopped: a trial left running by the dead driver is marked failed
(``interrupted``) and its parameters are tried again. Trials run one at a time; a finished study is
summarised in ``runs/tune-<study>/index.html`` (the best trials, Optuna's optimisation history,
intermediate values and parameter importances) and ``trials.csv``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fpn_lab.errors import ParamsError
from fpn_lab.runner.paths import display_path, project_path, write_json_atomic
from fpn_lab.runner.trial import ENV, PRUNERS, make_pruner, open_storage

log = logging.getLogger(__name__)
DEFAULT_NOTEBOOK = "notebooks/getting_started.ipynb"
SPACE_KEYS = ("params", "notebook", "metric", "direction", "pruner", "seed", "space")
TYPES = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}


@dataclass
class SearchSpace:
    """A parsed search-space file (see the module docstring)."""

    params_file: Path | None
    notebook: Path
    metric: str
    direction: str
    pruner: str
    seed: int
    space: dict = field(default_factory=dict)

    def distributions(self) -> dict:
        """``{parameter: optuna distribution}``."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out = {}
        for key, spec in self.space.items():
            kind = spec["type"]
            if kind == "categorical":
                out[key] = CategoricalDistribution(spec["choices"])
            else:
                cls = FloatDistribution if kind == "float" else IntDistribution
                args = {k: spec[k] for k in ("log", "step") if k in spec}
                out[key] = cls(spec["low"], spec["high"], **args)
        return out


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space file.

    Raises:
        ParamsError: the file is missing or not a mapping, an unknown key, a parameter the notebook
            does not have, a malformed range or choice list, or a value the notebook's parameter
            validation refuses (each choice and both ends of each range are validated).
    """
    from fpn_lab.runner.params import load_params_file, notebook_parameters, validate_params

    path = project_path(path)
    if not path.is_file():
        raise ParamsError(f"search space file not found: {path}.")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: a search space is a YAML mapping with the keys {list(SPACE_KEYS)}; got "
                          f"{type(raw).__name__}.")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {unknown}; a search space has {list(SPACE_KEYS)}.")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise ParamsError(f"{path}: 'space' must map notebook parameters to ranges or choices, e.g. "
                          "{lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}; got " f"{space!r}.")
    notebook = project_path(raw.get("notebook") or DEFAULT_NOTEBOOK)
    spec = notebook_parameters(notebook)
    base = load_params_file(raw["params"]) if raw.get("params") else {}
    for key, item in space.items():
        if key not in spec:
            raise ParamsError(f"{path}: space key {key!r} is not a parameter of {notebook.name} (its parameters: "
                              f"{sorted(spec)}).")
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in TYPES:
            raise ParamsError(f"{path}: space.{key} needs type float, int or categorical; got {item!r}.")
        extra = sorted(set(item) - {"type", *TYPES[kind]})
        if extra:
            raise ParamsError(f"{path}: space.{key} ({kind}) does not take {extra}; it takes {list(TYPES[kind])}.")
        if kind == "categorical":
            values = item.get("choices")
            if not isinstance(values, list) or len(values) < 2:
                raise ParamsError(f"{path}: space.{key} needs a list of at least two choices; got {values!r}.")
        else:
            low, high = item.get("low"), item.get("high")
            number = (int,) if kind == "int" else (int, float)
            if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)) or not low < high:
                raise ParamsError(f"{path}: space.{key} ({kind}) needs numbers low < high; got low={low!r}, high={high!r}.")
            if item.get("log") and low <= 0:
                raise ParamsError(f"{path}: space.{key} has log: true, which needs low > 0; got {low!r}.")
            values = [low, high]
        for value in values:  # each value must be one the notebook accepts, with the base parameters
            try:
                validate_params({**base, key: value}, notebook, spec=spec)
            except ParamsError as e:
                raise ParamsError(f"{path}: space.{key} value {value!r}: {e}") from None
    metric = raw.get("metric", "AP")
    if not isinstance(metric, str) or not metric:
        raise ParamsError(f"{path}: metric must be a metric or column name (AP, AP50, valid_loss...); got {metric!r}.")
    direction = raw.get("direction", "minimize" if metric.endswith("loss") else "maximize")
    if direction not in ("maximize", "minimize"):
        raise ParamsError(f"{path}: direction must be maximize or minimize; got {direction!r}.")
    pruner = raw.get("pruner", "median")
    if pruner not in PRUNERS:
        raise ParamsError(f"{path}: pruner must be one of {list(PRUNERS)}; got {pruner!r}.")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParamsError(f"{path}: seed must be an int; got {seed!r}.")
    return SearchSpace(project_path(raw["params"]) if raw.get("params") else None, notebook, metric, direction,
                       pruner, seed, dict(space))


def _final_value(metrics: dict, name: str) -> float | None:
    """The run's value of ``name``: its final evaluation's metric, else the last epoch's column."""
    value = (metrics.get("metrics") or {}).get(name)
    if value is None and metrics.get("history"):
        value = metrics["history"][-1].get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def tune(space_file: str | Path, *, trials: int, storage: str | None = None, study_name: str | None = None,
         overrides: dict | None = None, runs_dir: str | Path = "runs", echo: bool = True) -> Path:
    """Run (or resume) the study of ``space_file`` until it has ``trials`` finished trials (complete,
    pruned or failed; trials interrupted by a killed driver do not count). Returns the study's folder.

    Args:
        storage: an Optuna database URL or a journal file path; default ``<study folder>/study.journal``.
        study_name: default: the space file's stem. The folder is ``runs_dir/tune-<study_name>``.
        overrides: parameters for every trial on top of the space file's ``params`` (``--set``).

    Raises:
        ParamsError: a bad space file, ``trials`` < 1, or a study in ``storage`` of the same name whose
            direction differs; a trial's own failure is recorded, not raised.
        MissingExtraError: optuna is not installed (the ``tune`` extra).
    """
    from fpn_lab.extras import require

    require("tune", "fpn-lab tune", "optuna", "optuna_integration")
    import optuna

    from fpn_lab.runner.papermill_run import run_notebook

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ParamsError(f"--trials must be a positive int; got {trials!r}.")
    space = load_space(space_file)
    name = study_name or Path(space_file).stem
    study_dir = project_path(runs_dir) / f"tune-{name}"
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or str(study_dir / "study.journal")
    pruner = make_pruner(space.pruner)
    try:
        study = optuna.create_study(study_name=name, storage=open_storage(storage), direction=space.direction,
                                    pruner=pruner, sampler=optuna.samplers.TPESampler(seed=space.seed),
                                    load_if_exists=True)
    except ValueError as e:  # an existing study with another direction
        raise ParamsError(f"study {name!r} in {storage}: {e}") from None
    if study.direction.name.lower() != space.direction:
        raise ParamsError(f"study {name!r} in {storage} was created to {study.direction.name.lower()} its metric, the "
                          f"space file says {space.direction}: use another --study name.")
    _resume(study)
    dists = space.distributions()
    while _finished(study) < trials:
        trial = study.ask(dists)
        run_dir = study_dir / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", display_path(run_dir))
        os.environ[ENV] = json.dumps({"storage": storage, "study": name, "trial_id": trial._trial_id,
                                      "monitor": space.metric, "pruner": space.pruner})
        try:
            _, ok = run_notebook(space.params_file, overrides={**(overrides or {}), **trial.params},
                                 notebook=space.notebook, run_dir=run_dir, echo=echo)
        except ParamsError as e:  # this trial's parameters are refused together: a failed trial, the study goes on
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d refused: %s", trial.number, e)
            continue
        finally:
            os.environ.pop(ENV, None)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        value = _final_value(metrics, space.metric) if ok else None
        if metrics.get("status") == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif value is None:
            trial.set_user_attr("error", (metrics.get("error") or {}).get("evalue") or f"no finite {space.metric}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
    write_report(study, study_dir, space)
    if echo:
        best = _best(study)
        print(f"[fpn-lab] study {name}: {len(study.trials)} trials; "
              + (f"best {space.metric} {best.value:.4f} (trial {best.number}: {best.params})" if best else "none finished")
              + f"\n  report: {study_dir / 'index.html'}", flush=True)
    return study_dir


def _finished(study) -> int:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and not t.user_attrs.get("interrupted") for t in study.trials)


def _resume(study) -> None:
    """Trials a killed driver left running: marked failed (``interrupted``) and their parameters queued again."""
    import optuna
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.trial.Trial(study, t._trial_id).set_user_attr("interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log.warning("trial %d was left running by a stopped driver: marked failed and queued again", t.number)


def _best(study):
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return study.best_trial if done else None


def _figure(plot, study) -> str:
    """An Optuna matplotlib plot as a base64 PNG, or ``""`` when Optuna cannot draw it (too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        ax = plot(study)
    except (ValueError, RuntimeError) as e:
        log.info("%s not drawn: %s", plot.__name__, e)
        return ""
    fig = (ax.flatten()[0] if hasattr(ax, "flatten") else ax).figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(study, study_dir: Path, space: SearchSpace) -> Path:
    """``index.html`` (the best trials first, then Optuna's plots) and ``trials.csv`` / ``summary.json``
    in ``study_dir``. Returns the HTML path."""
    import warnings

    from optuna.visualization import matplotlib as vis

    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    frame.to_csv(study_dir / "trials.csv", index=False)
    maximise = space.direction == "maximize"
    ranked = frame.sort_values("value", ascending=not maximise, na_position="last")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib backend is marked experimental
        figures = {title: _figure(plot, study) for title, plot in (
            ("Optimisation history", vis.plot_optimization_history),
            (f"{space.metric} per epoch (what the pruner saw)", vis.plot_intermediate_values),
            ("Parameter importances (fANOVA)", vis.plot_param_importances))}
    best = _best(study)
    write_json_atomic(study_dir / "summary.json", {
        "study": study.study_name, "metric": space.metric, "direction": space.direction, "trials": len(study.trials),
        "states": frame["state"].value_counts().to_dict(),
        "best": {"number": best.number, "value": best.value, "params": best.params,
                 "run_dir": best.user_attrs.get("run_dir")} if best else None})
    parts = [f"<h1>Study {html.escape(study.study_name)}</h1>",
             f"<p>{space.direction} {html.escape(space.metric)}; {len(study.trials)} trials.</p>",
             ranked.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")]
    for title, png in figures.items():
        parts.append(f"<h2>{html.escape(title)}</h2>" + (f'<img src="data:image/png;base64,{png}">' if png else
                                                         "<p>not drawn: too few finished trials</p>"))
    out = study_dir / "index.html"
    tmp = out.with_suffix(".tmp")
    tmp.write_text("<!doctype html><meta charset='utf-8'><title>fpn-lab tune</title>" + "\n".join(parts))
    tmp.replace(out)
    return out
