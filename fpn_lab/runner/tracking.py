"""Run tracking: ``track: none | tensorboard | mlflow`` (notebook parameter, ``fpn-lab run --track``).

* ``tensorboard``: fastai's own ``TensorBoardCallback`` writes the training loss per step, the
  optimiser's hyper-parameters and, per epoch, ``valid_loss``, ``AP`` and ``AP50`` into
  ``<run>/tensorboard/``; at the end the final COCO stats (``final/...``) and the run's figures
  (``curves.png``, ``confusion_matrix.png``) are added with torch's ``SummaryWriter``. Open with
  ``tensorboard --logdir runs``.
* ``mlflow``: MLflow 3 has no fastai flavour (``mlflow.fastai`` was removed), so a small fastai
  callback logs through ``MlflowClient``: the run's parameters at the start, ``train_loss``,
  ``valid_loss``, ``AP``, ``AP50`` per epoch (step = epoch, counted over every fit), then the final COCO stats, the
  suggested threshold, and as artefacts ``metrics.json``, the checkpoint and the figures. The
  store is ``MLFLOW_TRACKING_URI`` when set (a server, a database, a folder), else a SQLite file
  in the project's ``runs/mlflow.db`` with artefacts in ``runs/mlartifacts/`` (MLflow's own
  default backend since 3.7 is SQLite; its file store is kept only for old folders); a SQLite store
  anywhere keeps its artefacts in ``mlartifacts/`` beside the file. The
  experiment is ``fpn_lab`` (``MLFLOW_EXPERIMENT_NAME`` to change it). MLflow's anonymous usage
  telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY``), unless the user set that variable:
  nothing leaves the machine unless the tracking URI points elsewhere. A run that fails before
  :meth:`MLflowTracker.finish` is ended as ``FAILED`` when the kernel exits, or, when the kernel
  was killed (out of memory, a timeout), by the headless runner (:func:`end_unfinished_run`).
  Batches create the store once before their runs start (:func:`prepare_store`): runs creating a
  new SQLite store at the same time race in its schema migration.

Steps never overlap across fits (``fine_tune`` fits twice): TensorBoard counts iterations and
MLflow epochs over every fit, and the final values are logged at the last step. NaN and inf are
logged as they are (a diverged epoch must show), never dropped.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

from fpn_lab.errors import ParamsError

TRACKERS = ("none", "tensorboard", "mlflow")
FIGURES = ("curves.png", "confusion_matrix.png")


def check_track(value) -> str:
    """``value`` if it names a tracker whose packages are installed.

    Raises:
        ParamsError: an unknown tracker.
        MissingExtraError: the tracker's package is not installed (the ``tracking`` extra).
    """
    from fpn_lab.extras import require

    if value not in TRACKERS:
        raise ParamsError(f"track: {value!r} is not one of {list(TRACKERS)}.")
    if value != "none":
        require("tracking", f"track: {value}", value)
    return value


def make_tracker(track: str, run):
    """The tracker for ``track`` (``None`` for ``"none"``)."""
    check_track(track)
    if track == "tensorboard":
        return TensorBoardTracker(run)
    if track == "mlflow":
        return MLflowTracker(run)
    return None


def _final_scalars(data: dict) -> dict[str, float]:
    """The numbers worth a line in a tracker: COCO stats, per-class AP (NaN for a class without
    ground truth), the suggested threshold."""
    met = data.get("metrics", {})
    out = {k: v for k, v in met.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"AP_{name}": v for name, v in met.get("per_class_AP", {}).items()})
    best = ((data.get("analysis") or {}).get("best_threshold") or {})
    if best.get("score") is not None:
        out["best_threshold"], out["best_mean_F1"] = best["score"], best["mean_F1"]
    return {k: float(v) for k, v in out.items() if v is not None}


def _tensorboard_callback(log_dir: str):
    """fastai's ``TensorBoardCallback`` (scalars only: no graph trace, since a detector's forward
    takes targets, and no drawn predictions, since fastai's show_results knows no boxes) whose step
    counts iterations over every fit, where fastai's restarts at 0 for each (``fine_tune``'s second
    fit would write over its first)."""
    from fastai.callback.tensorboard import TensorBoardCallback

    class GlobalStepTensorBoard(TensorBoardCallback):
        done = 0  # iterations of the fits before this one
        run_valid = False  # fastai's logs train_loss again after each validation batch, at the same step

        @property
        def train_iter(self):
            return self.done + self.learn.train_iter

        def after_fit(self):  # fastai calls it only where the callback ran (not in lr_find)
            self.done = self.train_iter
            super().after_fit()

    return GlobalStepTensorBoard(log_dir=log_dir, trace_model=False, log_preds=False)


class TensorBoardTracker:
    def __init__(self, run):
        self.log_dir = run.path("tensorboard")
        self.cb = None

    def callback(self):
        if self.cb is None:
            self.cb = _tensorboard_callback(str(self.log_dir))
        return self.cb

    def finish(self, data: dict, run_dir: Path) -> None:
        import matplotlib.image as mpimg
        from torch.utils.tensorboard import SummaryWriter

        step = self.cb.done if self.cb is not None else 0  # the last iteration of the last fit
        with SummaryWriter(log_dir=str(self.log_dir)) as writer:
            for k, v in _final_scalars(data).items():
                writer.add_scalar(f"final/{k}", v, step)
            for name in FIGURES:
                if (run_dir / name).is_file():
                    writer.add_image(name.removesuffix(".png"), mpimg.imread(run_dir / name)[..., :3], step,
                                     dataformats="HWC")


EXPERIMENT = "fpn_lab"


def prepare_store():
    """The MLflow store and the experiment runs log to: ``(client, uri, experiment name, id)``,
    both created when missing (the store's schema migrated). :func:`~fpn_lab.runner.batch.run_batch`
    calls it once before parallel runs that track to MLflow."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    from fpn_lab.runner.paths import project_path

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_path('runs') / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # beside a SQLite file (MLflow would put them in ./mlruns of the working folder); a server decides its own
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri() \
            if uri.startswith("sqlite:///") else None
        return client, uri, name, client.create_experiment(name, artifact_location=location)
    return client, uri, name, exp.experiment_id


def end_unfinished_run(run_dir: Path) -> int:
    """End as ``FAILED`` the MLflow runs of ``run_dir`` still ``RUNNING`` (a kernel killed before
    its exit handler could end them); returns how many. Called by the headless runner for a failed
    run that tracked to MLflow."""
    client, _, _, exp_id = prepare_store()
    tag = str(Path(run_dir).resolve())  # compared here, not in a filter string (quotes in paths)
    found = [r for r in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'")
             if r.data.tags.get("fpn_lab.run_dir") == tag]
    for r in found:
        client.set_terminated(r.info.run_id, "FAILED")
    return len(found)


class MLflowTracker:
    def __init__(self, run):
        from mlflow.entities import Param

        self.client, uri, name, exp_id = prepare_store()
        self.uri = uri
        self.run_id = self.client.create_run(exp_id, run_name=run.dir.name,
                                             tags={"fpn_lab.run_dir": str(Path(run.dir).resolve())}).info.run_id
        params = [Param(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in sorted(run.params.items())]
        self.client.log_batch(self.run_id, params=params)
        self.ended, self.cb = False, None
        atexit.register(self._end_failed)
        print(f"MLflow run {self.run_id} in {uri} (experiment {name!r})")

    def callback(self):
        from fpn_lab.learner.progress import EpochMetrics

        if self.cb is None:
            self.cb = EpochMetrics(self.log_metrics)
        return self.cb

    def log_metrics(self, values: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, data: dict, run_dir: Path) -> None:
        self.log_metrics({f"final_{k}": v for k, v in _final_scalars(data).items()},
                         step=self.cb.step if self.cb is not None else 0)
        for name in ("metrics.json", "model.pth", *FIGURES):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.ended = True

    def _end_failed(self) -> None:
        if not self.ended:
            self.client.set_terminated(self.run_id, "FAILED")
            self.ended = True
