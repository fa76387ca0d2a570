"""fpn-lab tune: Optuna studies whose trials are notebook runs: the space file's checks, pruning from inside
the kernel, resuming a study whose driver stopped, and the report."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from fpn_lab.errors import ParamsError
from fpn_lab.runner.trial import open_storage
from fpn_lab.runner.tune import load_space, tune

BASE = {"selection": "yolox_tiny_pafpn_300e", "data_dir": "data/fridge", "split": "random", "image_size": 64,
        "batch_size": 2, "lr": 3e-3, "lr_find_iters": 0, "detection_threshold": 0.0, "num_threads": 1}


def _space(tmp_path, space, **extra):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": str(tmp_path / "base.yaml"), "space": space, **extra}))
    return path


@pytest.mark.parametrize("space, match", [
    ({"lr": {"type": "float", "low": 1e-3}}, r"space.lr \(float\) needs numbers low < high"),
    ({"lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, r"space key 'lrr' is not a parameter"),
    ({"neck": {"type": "categorical", "choices": ["fpn", "fpn3"]}}, r"space.neck value 'fpn3': neck: 'fpn3' is not one"),
    ({"epochs": {"type": "int", "low": 0, "high": 3}}, r"space.epochs value 0: epochs: 0 must be a positive int"),
    ({"lr": {"type": "float", "low": 0, "high": 1e-2, "log": True}}, r"log: true, which needs low > 0"),
    ({"lr": {"type": "normal", "low": 0, "high": 1}}, r"needs type float, int or categorical"),
])
def test_a_bad_space_is_refused_before_any_run(tmp_path, space, match):
    with pytest.raises(ParamsError, match=match):
        load_space(_space(tmp_path, space))
    assert not (tmp_path / "runs").exists()


def test_a_study_prunes_the_choice_that_cannot_learn_and_reports(tmp_path):
    """lr 2e-2 without warm-up makes YOLOX-tiny diverge here (validation loss about 900 after one epoch, against
    10.7 at lr 1e-3): once a trial has finished, the median pruner stops every such trial after its first
    epoch, from inside the notebook's kernel. The sampler's seed 0 draws 2e-2, 1e-3, 2e-2, 2e-2."""
    space = _space(tmp_path, {"lr": {"type": "categorical", "choices": [1e-3, 2e-2]}}, metric="valid_loss", seed=0)
    study_dir = tune(space, trials=4, study_name="prune", runs_dir=tmp_path / "runs", echo=False,
                     overrides={"epochs": 3, "one_cycle": {"pct_start": 0.05, "div": 1.0}})
    study = optuna.load_study(study_name="prune", storage=open_storage(str(study_dir / "study.journal")))
    states = {t.number: t.state for t in study.trials}
    assert [s.name for s in states.values()] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"], states
    for t in study.trials:
        metrics = json.loads((study_dir / f"trial-{t.number:03d}" / "metrics.json").read_text())
        assert metrics["params"]["lr"] == t.params["lr"]  # each trial ran the notebook with its own parameters
        if t.state == optuna.trial.TrialState.PRUNED:
            assert t.params["lr"] == 2e-2 and metrics["status"] == "pruned"
            assert len(t.intermediate_values) == 1  # reported from the kernel after epoch 1, then stopped
        else:
            assert metrics["status"] == "ok" and t.value == pytest.approx(metrics["history"][-1]["valid_loss"])
            assert sorted(t.intermediate_values) == [0, 1, 2]
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["best"]["params"] == {"lr": 1e-3} and summary["states"] == {"PRUNED": 2, "COMPLETE": 2}
    page = (study_dir / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "Optimisation history" in page


def test_a_study_resumes_the_trial_its_stopped_driver_left_running(tmp_path):
    space = _space(tmp_path, {"epochs": {"type": "int", "low": 1, "high": 2}}, metric="valid_loss")
    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="resume", storage=open_storage(storage), direction="minimize")
    left = study.ask({"epochs": optuna.distributions.IntDistribution(1, 2)})  # the driver died during this trial
    study_dir = tune(space, trials=1, storage=storage, study_name="resume", runs_dir=tmp_path / "runs", echo=False)
    trials = optuna.load_study(study_name="resume", storage=open_storage(storage)).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL and trials[0].user_attrs["interrupted"]
    assert len(trials) == 2 and trials[1].state == optuna.trial.TrialState.COMPLETE
    assert trials[1].params == left.params and trials[1].user_attrs["retry_of"] == 0  # its parameters, tried again
    assert (study_dir / "trial-001" / "metrics.json").exists()
