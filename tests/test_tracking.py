"""Run tracking without the notebook: steps that never overlap across fine_tune's two fits,
non-finite values logged as they are, a killed run ended as FAILED by the runner, and one store
made before parallel runs."""

from __future__ import annotations

import math

import pytest

from conftest import DATA
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.learner.learner import make_learner
from fpn_lab.models.build import build_model
from fpn_lab.runner.context import Run, set_seed


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _fine_tune(tracker_callback, tmp_path):
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    set_seed(0)
    ds = Dataset(records[:4], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    learn = make_learner(make_dataloaders(ds, ds, 2), model, parser.class_map, path=tmp_path, cbs=[tracker_callback])
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, 1e-3, freeze_epochs=1)  # two fits: the frozen epoch, then one more


def test_mlflow_steps_count_epochs_over_both_fits_of_fine_tune(store):
    """After fine_tune the second fit logged at the first fit's steps, and the final stats at a
    third step unit."""
    from fpn_lab.runner.tracking import MLflowTracker

    run = Run({"track": "mlflow"}, run_dir=store / "r")
    tracker = MLflowTracker(run)
    _fine_tune(tracker.callback(), store)
    tracker.finish({"metrics": {"AP": 0.25, "AP50": math.nan, "per_class_AP": {"can": math.nan}}}, run.dir)
    history = tracker.client.get_metric_history(tracker.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    final = tracker.client.get_run(tracker.run_id).data.metrics
    assert final["final_AP"] == 0.25 and tracker.client.get_metric_history(tracker.run_id, "final_AP")[0].step == 2
    assert math.isnan(final["final_AP50"]) and math.isnan(final["final_AP_can"])  # NaN logged, not dropped


def test_tensorboard_steps_grow_over_both_fits_of_fine_tune(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fpn_lab.runner.tracking import TensorBoardTracker

    run = Run({"track": "tensorboard"}, run_dir=tmp_path / "r")
    tracker = TensorBoardTracker(run)
    _fine_tune(tracker.callback(), tmp_path)
    tracker.finish({"metrics": {"AP": 0.25}}, run.dir)
    steps = []
    for events in sorted(tracker.log_dir.glob("events.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "train_loss" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("train_loss")]
        if "final/AP" in acc.Tags()["scalars"]:
            final_step = acc.Scalars("final/AP")[0].step
    assert steps == sorted(steps) and len(set(steps)) == len(steps) == 4  # 2 batches per fit, no step twice
    assert final_step == steps[-1]


def test_a_killed_runs_mlflow_run_is_ended_as_failed_and_parallel_runs_share_one_store(store):
    """A kernel killed on a timeout left the MLflow run RUNNING (only its exit handler ended it)."""
    from fpn_lab.runner.tracking import MLflowTracker, end_unfinished_run, prepare_store

    client, uri, _, exp_id = prepare_store()
    assert uri.endswith("mlflow.db") and prepare_store()[3] == exp_id  # made once, found after
    run = Run({"track": "mlflow"}, run_dir=store / "killed")
    tracker = MLflowTracker(run)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    assert end_unfinished_run(store / "killed") == 1
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    tracker.ended = True  # nothing left for its exit handler
