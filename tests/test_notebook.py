"""The getting-started notebook headless through papermill: a smoke run and a failing run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT
from fpn_lab.errors import ParamsError
from fpn_lab.runner.papermill_run import run_notebook

pytestmark = pytest.mark.notebook


def test_smoke_run_writes_every_artefact(tmp_path):
    run_dir, ok = run_notebook(ROOT / "params" / "smoke.yaml", runs_dir=tmp_path, echo=False)
    assert ok, (run_dir / "run.log").read_text()[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["preset"] == "yolox_tiny_pafpn_300e"
    assert set(metrics["metrics"]) >= {"AP", "AP50", "AR100", "per_class_AP"}
    assert metrics["dataset"]["split"] == {"name": "random", "train": 5, "valid": 1}
    assert {"setup", "training", "evaluation", "rendering"} <= set(metrics["timing_s"])
    peak = metrics["peak_rss_mb"]  # a high-water mark per phase: never falls, and a detector needs > 200 MiB
    assert list(peak)[-1] == "total_notebook" and {"setup", "training", "evaluation"} <= set(peak)
    assert list(peak.values()) == sorted(peak.values()) and peak["training"] > 200
    assert len(metrics["history"]) == 1 and metrics["versions"]["mmdet"] == "3.3.0"
    from fpn_lab.mmdet_adapter.mmcv_ext import ops_path

    assert metrics["versions"]["mmcv_ops"] == ops_path()  # which kernels ran mmcv's operators
    analysis = metrics["analysis"]  # smoke.yaml draws at 0.0: the confusion matrix counts every detection
    assert set(analysis["by_size"]) == {"small", "medium", "large"}
    assert analysis["confusion_matrix"]["score_threshold"] == 0.0
    counts = np.array(analysis["confusion_matrix"]["counts"])
    n_boxes = sum(v["boxes"] for v in analysis["by_size"].values())
    assert counts[:-1].sum() == n_boxes  # each scored box is either paired or missed, once
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert counts[:, :-1].sum() == len(predictions)  # every detection is paired or false (no crowd boxes here)
    assert (run_dir / "confusion_matrix.png").stat().st_size > 0 and (run_dir / "curves.png").stat().st_size > 0
    assert len(predictions) > 0  # smoke.yaml keeps every box (score_thr 0), so the counts above are not 0 == 0
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in predictions)
    assert metrics["params"]["cfg_options"] == {"model.test_cfg.score_thr": 0.0}
    html = (run_dir / "getting_started.html").read_text()
    assert "data:image/png;base64" in html and "AP50" in html and "Run summary: OK" in html
    assert not re.search(r"""(src|href)=["']https?://""", html)  # no script or style fetched from a CDN
    first = json.loads((run_dir / "getting_started.ipynb").read_text())["cells"][0]
    assert first["metadata"]["tags"] == ["fpn-lab-summary"] and "yolox_tiny_pafpn_300e" in "".join(first["source"])
    threads = metrics["threads"]  # how many threads the run used, and why, in metrics.json and the summary
    assert threads["count"] >= 1 and threads["reason"] and f"| torch threads | {threads['count']} (" in "".join(first["source"])
    assert (run_dir / "model.pth").exists() and (run_dir / "run.log").stat().st_size > 0
    again, ok2 = run_notebook(ROOT / "params" / "smoke.yaml", runs_dir=tmp_path, echo=False,
                              overrides={"run_name": run_dir.name, "epochs": 1, "lr_find_iters": 0})
    assert ok2 and again != run_dir and again.name == run_dir.name + "-2"  # never overwrites a run


def test_failed_run_exits_nonzero_and_keeps_partial_notebook_html_and_log(tmp_path):
    cmd = [sys.executable, "-m", "fpn_lab.cli", "run", str(ROOT / "params" / "smoke.yaml"), "--set", "batch_size=16",
           "--runs-dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    (run_dir,) = list(tmp_path.iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"]["ename"] == "DataError"
    assert metrics["error"]["cell_index"] >= 1 and "larger than the training set" in metrics["error"]["evalue"]
    assert (run_dir / "getting_started.ipynb").exists() and (run_dir / "getting_started.html").exists()
    assert "FAILED" in out.stdout


def test_bad_params_fail_before_a_run_folder_is_made(tmp_path):
    with pytest.raises(ParamsError, match="epoch"):
        run_notebook(overrides={"epoch": 1}, runs_dir=tmp_path, echo=False)
    with pytest.raises(ParamsError, match="SSD300"):
        run_notebook(overrides={"selection": 3}, runs_dir=tmp_path, echo=False)
    with pytest.raises(ParamsError, match="kernel 'no-such-kernel' is not installed"):
        run_notebook(ROOT / "params" / "smoke.yaml", runs_dir=tmp_path, kernel="no-such-kernel", echo=False)
    assert not list(tmp_path.iterdir())


def test_an_explicit_run_dir_must_be_new_or_empty(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "metrics.json").write_text("{}")
    with pytest.raises(ParamsError, match=r"taken is a folder holding \['metrics.json'\].*must be new or empty"):
        run_notebook(ROOT / "params" / "smoke.yaml", run_dir=taken, echo=False)
    with pytest.raises(ParamsError, match="must be new or empty"):
        run_notebook(ROOT / "params" / "smoke.yaml", overrides={"run_dir": str(taken / "metrics.json")}, echo=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics.json", "taken"]


def test_compare_necks_renders_the_study_from_its_metrics(tmp_path):
    """The default: the kept runs of bench/logs/necks, no training."""
    cmd = [sys.executable, "-m", "fpn_lab.cli", "run", str(ROOT / "params" / "compare_necks.yaml"), "--set",
           "complexity=false", "--runs-dir", str(tmp_path)]  # the notebook is chosen from the params file's name
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = {r["neck"]: r for r in metrics["necks"]}
    assert set(rows) == {"YOLOXPAFPN", "FPN", "PAFPN", "NASFPN", "BiFPN", "ChannelMapper"}
    assert metrics["necks"][0]["verdict"] == "baseline" and len(metrics["runs"]) >= 6
    assert (run_dir / "compare_necks.html").read_text().count("data:image/png;base64,") >= 2  # AP and per-class figures


def _neck_params(tmp_path, necks):
    folder = tmp_path / "necks"
    folder.mkdir()
    base = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    for neck in necks:
        (folder / f"{neck}.yaml").write_text(yaml.safe_dump({**base, "neck": neck, "lr_find_iters": 0, "image_size": 128}))
    return folder


def test_compare_necks_trains_the_necks_when_asked(tmp_path):
    overrides = {"train": True, "necks_params": str(_neck_params(tmp_path, ["fpn", "bifpn"])), "seeds": [3]}
    run_dir, ok = run_notebook(notebook=ROOT / "notebooks" / "compare_necks.ipynb", overrides=overrides,
                               runs_dir=tmp_path / "runs", echo=False)
    assert ok, (run_dir / "run.log").read_text()[-3000:]
    rows = {r["neck"]: r for r in json.loads((run_dir / "metrics.json").read_text())["necks"]}
    assert set(rows) == {"FPN", "BiFPN"} and rows["FPN"]["seeds"] == [3] and rows["BiFPN"]["flops"] > 0
    for neck in ("fpn", "bifpn"):  # each neck trained as its own run inside the comparison's folder
        assert json.loads((run_dir / "seed3" / neck / "metrics.json").read_text())["params"]["seed"] == 3
    assert (run_dir / "seed3" / "index.html").is_file()


def test_compare_necks_fails_when_a_neck_s_run_fails(tmp_path):
    """A neck that cannot run fails the comparison (it used to be recorded as skipped, and the run as ok)."""
    overrides = {"train": True, "necks_params": str(_neck_params(tmp_path, ["bifpnx"])), "seeds": [0]}
    run_dir, ok = run_notebook(notebook=ROOT / "notebooks" / "compare_necks.ipynb", overrides=overrides,
                               runs_dir=tmp_path / "runs", echo=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert not ok and metrics["status"] == "failed" and metrics["error"]["ename"] == "TrainingError"
    assert "seed 0: a neck's run failed" in metrics["error"]["evalue"]
    assert "bifpnx" in (run_dir / "seed0" / "index.html").read_text()


def _notebook_with_progress_lines(tmp_path):
    """getting_started.ipynb, whose learner gets the run's callbacks (the per-epoch lines among them)."""
    import nbformat

    path = ROOT / "notebooks" / "getting_started.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    assert any("cbs=run.callbacks()" in c.source for c in nb.cells)
    return path


def test_headless_run_prints_one_line_per_epoch_outside_the_notebook(tmp_path):
    cmd = [sys.executable, "-m", "fpn_lab.cli", "run", str(ROOT / "params" / "smoke.yaml"), "--set", "epochs=2",
           "--set", "lr_find_iters=0", "--notebook", str(_notebook_with_progress_lines(tmp_path)),
           "--runs-dir", str(tmp_path / "runs")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    line = (r"epoch {}/2: train_loss \d+\.\d{{4}}, valid_loss \d+\.\d{{4}}, AP (\d+\.\d{{4}}|nan), AP50 \S+, "
            r"loss_cls \d+\.\d{{4}}, loss_bbox \d+\.\d{{4}}, loss_obj \d+\.\d{{4}}, \d+\.\d s")  # YOLOX's loss terms
    err = out.stderr.splitlines()
    at = [next(i for i, s in enumerate(err) if re.fullmatch(r"\[fpn-lab\] " + line.format(k), s)) for k in (1, 2)]
    cells = [i for i, s in enumerate(err) if re.match(r"\[fpn-lab \d\d:\d\d\] cell ", s)]
    assert cells[0] < at[0] < at[1] < cells[-1], out.stderr  # printed while the run goes, not at its end
    (run_dir,) = (tmp_path / "runs").iterdir()
    log = (run_dir / "run.log").read_text()
    assert all(re.search(r" INFO fpn_lab.progress: " + line.format(k), log) for k in (1, 2)), log[-3000:]
    outputs = json.dumps([c.get("outputs", []) for c in json.loads((run_dir / "getting_started.ipynb").read_text())["cells"]])
    assert "fpn_lab.progress" not in outputs and not re.search(r"epoch \d/2:", outputs)  # one clean fastai table
    assert "train_loss" in outputs  # ... which is there


def test_dead_kernel_is_reported_as_such(tmp_path):
    import nbformat

    cells = [nbformat.v4.new_code_cell("run_dir = ''"), nbformat.v4.new_markdown_cell("## Train the model"),
             nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("import os\nos._exit(3)")]
    cells[0].metadata["tags"] = ["parameters"]
    nb = tmp_path / "dies.ipynb"
    meta = {"kernelspec": {"name": "fpn-lab", "display_name": "Python (fpn_lab)", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=meta), str(nb))
    run_dir, ok = run_notebook(notebook=nb, runs_dir=tmp_path / "runs", echo=False, overrides={})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert not ok and metrics["status"] == "failed" and metrics["error"]["ename"] == "DeadKernelError"
    assert "the kernel died" in metrics["error"]["evalue"]
    # a kernel killed mid-cell (out of memory) names the cell it was running, as a cell's own error does
    saved = nbformat.read(str(run_dir / "dies.ipynb"), as_version=4)
    assert "os._exit(3)" in saved.cells[metrics["error"]["cell_index"]].source
    assert metrics["error"]["step"] == "Train the model"


def test_notebook_trains_on_a_coco_folder_and_writes_source_ids(tmp_path, coco_fridge):
    run_dir, ok = run_notebook(ROOT / "params" / "smoke.yaml", runs_dir=tmp_path, echo=False,
                               overrides={"data_dir": str(coco_fridge), "data_format": "", "split": "random"})
    assert ok, (run_dir / "run.log").read_text()[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dataset = metrics["dataset"]
    assert dataset["format"] == "coco" and dataset["split"] == {"name": "random", "train": 5, "valid": 1}
    assert dict(zip(dataset["class_names"], dataset["category_ids"])) == {
        "carton": 0, "can": 3, "milk_bottle": 7, "water_bottle": 12}
    assert dataset["parse"]["crowd"] == 1 and dataset["parse"]["negatives"] == 1
    source = json.loads((coco_fridge / "annotations.json").read_text())
    gt = json.loads((run_dir / "ground_truth.json").read_text())
    assert [im["id"] for im in gt["images"]] == ["fridge-10"]  # the source's string id, not a position
    assert {c["id"] for c in gt["categories"]} == {c["id"] for c in source["categories"]}
    preds = json.loads((run_dir / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} <= {"fridge-10"} and {p["category_id"] for p in preds} <= {0, 3, 7, 12}
    import torch

    saved = torch.load(run_dir / "model.pth")  # the notebook's save cell (IceVision's call, names only) keeps the ids
    assert dict(zip(saved["class_names"], saved["category_ids"])) == {"carton": 0, "can": 3, "milk_bottle": 7,
                                                                      "water_bottle": 12}
    from fpn_lab.icevision.model_types import model_from_checkpoint

    class_map = model_from_checkpoint(run_dir / "model.pth")["class_map"]
    assert list(class_map.category_ids) == [saved["category_ids"][i] for i in range(4)]


def test_tensorboard_tracking_is_read_back_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, ok = run_notebook(ROOT / "params" / "smoke.yaml", overrides={"track": "tensorboard", "lr_find_iters": 0},
                               runs_dir=tmp_path, echo=False)
    assert ok, (run_dir / "run.log").read_text()[-3000:]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "valid_loss", "AP", "AP50", "final/AP", "final/AP50"} <= scalars, scalars
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert events.Scalars("final/AP")[-1].value == pytest.approx(metrics["metrics"]["AP"], abs=1e-6)
    assert events.Scalars("AP")[-1].value == pytest.approx(metrics["history"][-1]["AP"], abs=1e-6)
    assert {"curves", "confusion_matrix"} <= set(events.Tags()["images"])


def test_mlflow_tracking_is_read_back_by_mlflow(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the kernel inherits it; never the project's runs/mlflow.db
    run_dir, ok = run_notebook(ROOT / "params" / "smoke.yaml", overrides={"track": "mlflow", "lr_find_iters": 0},
                               runs_dir=tmp_path / "runs", echo=False)
    assert ok, (run_dir / "run.log").read_text()[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["fpn_lab"])
    assert len(runs) == 1
    row = runs.iloc[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert row["status"] == "FINISHED" and row["tags.mlflow.runName"] == run_dir.name
    assert row["metrics.final_AP"] == pytest.approx(metrics["metrics"]["AP"], abs=1e-6)
    assert row["params.image_size"] == "64" and row["params.track"] == "mlflow"
    history = mlflow.MlflowClient(uri).get_metric_history(row["run_id"], "valid_loss")
    assert [m.step for m in history] == [1] and history[0].value == pytest.approx(metrics["history"][0]["valid_loss"])
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(row["run_id"])}
    assert {"metrics.json", "model.pth", "confusion_matrix.png", "curves.png"} <= artifacts
    location = mlflow.get_experiment_by_name("fpn_lab").artifact_location  # beside the database, not ./mlruns
    assert location == (tmp_path / "mlartifacts").as_uri() and not (ROOT / "mlruns").exists()


def test_a_failed_run_is_failed_in_mlflow(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir, ok = run_notebook(ROOT / "params" / "smoke.yaml", overrides={"track": "mlflow", "batch_size": 16},
                               runs_dir=tmp_path / "runs", echo=False)
    assert not ok
    mlflow.set_tracking_uri(uri)
    assert mlflow.search_runs(experiment_names=["fpn_lab"])["status"].tolist() == ["FAILED"]


def test_the_html_shows_widgets_as_text_and_carries_no_control_characters(tmp_path):
    """A widget output rendered as a blank area, and NUL / ESC from a cell's output were copied into the HTML."""
    import nbformat

    from fpn_lab.runner.execute import render_html

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("picker")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="a\x00b \x1b[31mred\x1b[0m lone\x1b done\x07\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {
            "model_id": "f00", "version_major": 2, "version_minor": 0}, "text/plain": "ModelPicker(retinanet_r18_fpn_1x)"}),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {
            "model_id": "f01", "version_major": 2, "version_minor": 0}}),
    ]
    nb.cells = [cell]
    nbformat.write(nb, str(tmp_path / "n.ipynb"))
    html = render_html(tmp_path / "n.ipynb", tmp_path / "n.html").read_text()
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", html)
    assert "ab" in html and "red</span>" in html and "lone done" in html  # the colour kept, the controls gone
    assert "ModelPicker(retinanet_r18_fpn_1x)" in html and "an interactive widget: open the notebook in Jupyter" in html
