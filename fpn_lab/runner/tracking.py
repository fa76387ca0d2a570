"""Run tracking: ``track: none | tensorboard | mlflow`` (notebook parameter, ``fpn-lab run --track``).

* ``tensorboard``: fastai's own ``TensorBoardCallback`` writes the training loss per step, the
  optimiser's hyper-parameters and, per epoch, ``valid_loss``, ``AP`` and ``AP50`` into
  ``<run>/tensorboard/``; at the end the final COCO stats (``final/...``) and the run's figures
  (``curves.png``, ``confusion_matrix.png``) are added with torch's ``SummaryWriter``. Open with
  ``tensorboard --logdir runs``.
* ``mlflow``: MLflow 3 has no fastai flavour (``mlflow.fastai`` was removed), so a small fastai
  callback logs through ``MlflowClient``: the run's parameters at the start, ``train_loss``,
  ``valid_loss``, ``AP``, ``AP50`` per epoch (step = epoch), then the final COCO stats, the
  suggested threshold, and as artefacts ``metrics.json``, the checkpoint and the figures. The
  store is ``MLFLOW_TRACKING_URI`` when set (a server, a database, a folder), else a SQLite file
  in the project's ``runs/mlflow.db`` with artefacts in ``runs/mlartifacts/`` (MLflow's own
  default backend since 3.7 is SQLite; its file store is kept only for old folders); a SQLite store
  anywhere keeps its artefacts in ``mlartifacts/`` beside the file. The
  experiment is ``fpn_lab`` (``MLFLOW_EXPERIMENT_NAME`` to change it). MLflow's anonymous usage
  telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY``), unless the user set that variable:
  nothing leaves the machine unless the tracking URI points elsewhere. A run that fails before
  :meth:`MLflowTracker.finish` is ended as ``FAILED`` when the kernel exits.
"""

from __future__ import annotations

import atexit
import json
import math
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
    """The finite numbers worth a line in a tracker: COCO stats, per-class AP, the suggested threshold."""
    met = data.get("metrics", {})
    out = {k: v for k, v in met.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"AP_{name}": v for name, v in met.get("per_class_AP", {}).items()})
    best = ((data.get("analysis") or {}).get("best_threshold") or {})
    if best.get("score") is not None:
        out["best_threshold"], out["best_mean_F1"] = best["score"], best["mean_F1"]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


class TensorBoardTracker:
    def __init__(self, run):
        self.log_dir = run.path("tensorboard")

    def callback(self):
        from fastai.callback.tensorboard import TensorBoardCallback

        # no graph trace (a detector's forward takes targets) and no drawn predictions (fastai's
        # show_results does not know boxes): the scalars
        return TensorBoardCallback(log_dir=str(self.log_dir), trace_model=False, log_preds=False)

    def finish(self, data: dict, run_dir: Path) -> None:
        import matplotlib.image as mpimg
        from torch.utils.tensorboard import SummaryWriter

        step = len(data.get("history", []))
        with SummaryWriter(log_dir=str(self.log_dir)) as writer:
            for k, v in _final_scalars(data).items():
                writer.add_scalar(f"final/{k}", v, step)
            for name in FIGURES:
                if (run_dir / name).is_file():
                    writer.add_image(name.removesuffix(".png"), mpimg.imread(run_dir / name)[..., :3], step,
                                     dataformats="HWC")


class MLflowTracker:
    EXPERIMENT = "fpn_lab"

    def __init__(self, run):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient
        from mlflow.entities import Param

        from fpn_lab.runner.context import project_path

        runs = project_path("runs")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs / 'mlflow.db'}"
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", self.EXPERIMENT)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            # beside a SQLite file (MLflow would put them in ./mlruns of the working folder); a server decides its own
            location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri() \
                if uri.startswith("sqlite:///") else None
            exp_id = self.client.create_experiment(name, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run.dir.name,
                                             tags={"fpn_lab.run_dir": str(run.dir)}).info.run_id
        params = [Param(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in sorted(run.params.items())]
        self.client.log_batch(self.run_id, params=params)
        self.ended = False
        atexit.register(self._end_failed)
        print(f"MLflow run {self.run_id} in {uri} (experiment {name!r})")

    def callback(self):
        from fpn_lab.learner.progress import EpochMetrics

        return EpochMetrics(self.log_metrics)

    def log_metrics(self, values: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, data: dict, run_dir: Path) -> None:
        self.log_metrics({f"final_{k}": v for k, v in _final_scalars(data).items()}, step=len(data.get("history", [])))
        for name in ("metrics.json", "model.pth", *FIGURES):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.ended = True

    def _end_failed(self) -> None:
        if not self.ended:
            self.client.set_terminated(self.run_id, "FAILED")
            self.ended = True
