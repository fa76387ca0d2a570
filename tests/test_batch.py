"""fpn-lab batch: two smoke runs (two at a time) and one failing run give the comparison page and a
non-zero exit; each row comes from its own run's folder; the pages open in headless Chromium with the
network blocked, every image loaded."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from conftest import CHROMIUM, NO_CHROMIUM, ROOT, offline_chromium
from fpn_lab.runner import batch as batch_module

notebook = pytest.mark.notebook
PARAMS = ROOT / "tests" / "data" / "params"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """README's example shape: ``--jobs 2``, so smoke_a and smoke_b write into the batch folder at once."""
    runs = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(PARAMS / "smoke_a.yaml"), str(PARAMS / "smoke_b.yaml"),
           str(PARAMS / "broken.yaml"), "--runs-dir", str(runs), "--name", "cmp", "--min", "AP50=0.0", "--jobs", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    return out, runs / "cmp"


@notebook
def test_batch_with_a_failing_run(batch):
    out, batch_dir = batch
    assert out.returncode == 1, out.stdout + out.stderr
    rows = {r["run"]: r for r in csv.DictReader(open(batch_dir / "comparison.csv"))}
    assert rows["smoke_a"]["status"] == rows["smoke_b"]["status"] == "ok", out.stdout
    # each row holds its own run's values (smoke_b differs in neck, image size and seed)
    assert rows["smoke_a"]["neck"] == "YOLOXPAFPN" and rows["smoke_b"]["neck"] == "FPN"
    assert (rows["smoke_a"]["image_size"], rows["smoke_a"]["seed"]) == ("64", "42")
    assert (rows["smoke_b"]["image_size"], rows["smoke_b"]["seed"]) == ("96", "7")
    for name in ("smoke_a", "smoke_b"):
        metrics = json.loads((batch_dir / name / "metrics.json").read_text())
        assert metrics["params"]["run_name"] == name and metrics["status"] == "ok"
    assert sorted(p.name for p in batch_dir.iterdir() if p.is_dir()) == ["broken", "smoke_a", "smoke_b"]
    assert rows["broken"]["status"] == "failed" and rows["broken"]["failed_step"] == "DataLoaders"
    assert "batch_size 16 is larger than the training set" in rows["broken"]["error"]
    page = (batch_dir / "index.html").read_text()
    assert page.count('<tr class="ok">') == 2 and "failed at step <b>DataLoaders</b>" in page
    assert 'href="smoke_a/getting_started.html"' in page and "data:image/png;base64," in page
    assert 'href="smoke_a/confusion_matrix.png">confusion matrix</a>' in page
    # two necks, but not one recipe (image size differs): the page says why there is no per-neck table
    assert "No per-neck table: the runs differ in [&#39;image_size&#39;]" in page
    analysis = json.loads((batch_dir / "smoke_a" / "metrics.json").read_text())["analysis"]
    best = analysis["best_threshold"]["score"]  # None when a one-epoch model has no detection to choose from
    assert rows["smoke_a"]["best_threshold"] == ("" if best is None else str(best))
    small = analysis["by_size"]["small"]["AP"]
    assert rows["smoke_a"]["AP_small"] == ("" if small is None else str(small))


def _fake_run(started: threading.Barrier, exit_code: int = 0):
    """A stand-in for ``subprocess.run`` of ``fpn-lab run``: makes the run folder the command names
    (``--run-dir``, or ``--runs-dir``/``run_name`` as before), waits until the other run has made
    its folder too, then writes a ``metrics.json`` carrying its own params file's values. Other
    commands run as usual."""
    real_run = subprocess.run

    def run(cmd, **kwargs):
        if not (isinstance(cmd, list) and "fpn_lab.cli" in cmd):
            return real_run(cmd, **kwargs)
        args = cmd[cmd.index("run") + 1:]
        params = yaml.safe_load((Path(kwargs.get("cwd", ".")) / args[0]).read_text())  # as the child would
        sets = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
        if "--run-dir" in args:
            run_dir = Path(args[args.index("--run-dir") + 1])
        else:
            run_dir = Path(args[args.index("--runs-dir") + 1]) / sets["run_name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        started.wait()
        (run_dir / "metrics.json").write_text(json.dumps({"status": "ok", "params": {**params, **sets}}))
        return subprocess.CompletedProcess(cmd, exit_code)

    return run


def test_parallel_runs_each_read_their_own_folder(tmp_path, monkeypatch):
    """``--jobs 2``: both runs write into the batch folder at once; each row must come from its own
    run (it used to take the first new folder in the batch folder: the other run's, for one of them)."""
    files = []
    for name, size, seed in (("a", 64, 1), ("b", 96, 2)):
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(f"selection: yolox_tiny_pafpn_300e\ndata_dir: data/fridge\nsplit: random\nimage_size: {size}\n"
                             f"seed: {seed}\n")
    monkeypatch.setattr(batch_module.subprocess, "run", _fake_run(threading.Barrier(2, timeout=60)))
    batch_dir, code = batch_module.run_batch(files, jobs=2, name="par", runs_dir=tmp_path / "runs", echo=False)
    rows = {r["run"]: r for r in csv.DictReader(open(batch_dir / "comparison.csv"))}
    assert code == 0 and rows["a"]["status"] == rows["b"]["status"] == "ok"
    assert (rows["a"]["image_size"], rows["a"]["seed"]) == ("64", "1")
    assert (rows["b"]["image_size"], rows["b"]["seed"]) == ("96", "2")


def test_a_run_that_exits_non_zero_is_failed_whatever_its_metrics_say(tmp_path, monkeypatch):
    """The batch took a run's status from its metrics.json alone: a run killed after writing
    'ok' (or whose command failed later) was an ok row and the batch exited 0."""
    (tmp_path / "a.yaml").write_text("selection: yolox_tiny_pafpn_300e\ndata_dir: data/fridge\nsplit: random\n"
                                     "image_size: 64\n")
    monkeypatch.setattr(batch_module.subprocess, "run", _fake_run(threading.Barrier(1, timeout=60), exit_code=1))
    batch_dir, code = batch_module.run_batch([tmp_path / "a.yaml"], name="x", runs_dir=tmp_path / "runs", echo=False)
    (row,) = csv.DictReader(open(batch_dir / "comparison.csv"))
    assert code == 1 and row["status"] == "failed"
    assert "exited with code 1 although its metrics.json says ok" in row["error"]


def test_a_batch_tracking_to_mlflow_makes_the_store_once_before_its_runs(tmp_path, monkeypatch):
    """Runs of `fpn-lab batch --jobs 2 --track mlflow` on a fresh store raced in creating and
    migrating the SQLite file, and one run failed with SQLAlchemy/alembic text."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    files = []
    for name in ("a", "b"):
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text("selection: yolox_tiny_pafpn_300e\ndata_dir: data/fridge\nsplit: random\nimage_size: 64\n")
    monkeypatch.setattr(batch_module.subprocess, "run", _fake_run(threading.Barrier(2, timeout=60)))
    _, code = batch_module.run_batch(files, jobs=2, name="t", runs_dir=tmp_path / "runs", echo=False,
                                     overrides=["track=mlflow"])
    assert code == 0 and (tmp_path / "store" / "mlflow.db").is_file()  # made by the batch, before the runs


def test_relative_params_paths_work_from_any_folder(tmp_path, monkeypatch):
    """The runs start in the project root; params files named relative to the caller's folder must
    still be found there."""
    (tmp_path / "bt").mkdir()
    (tmp_path / "bt" / "small.yaml").write_text("selection: yolox_tiny_pafpn_300e\ndata_dir: data/fridge\n"
                                                "split: random\nimage_size: 64\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(batch_module.subprocess, "run", _fake_run(threading.Barrier(1, timeout=60)))
    batch_dir, code = batch_module.run_batch(["bt/small.yaml"], name="rel", runs_dir=tmp_path / "runs", echo=False)
    (row,) = csv.DictReader(open(batch_dir / "comparison.csv"))
    assert code == 0 and row["status"] == "ok" and row["image_size"] == "64"


@notebook
def test_bad_params_give_a_failed_row_without_a_run(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("selection: yolox_tiny_pafpn_300e\nepoch: 1\n")
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(bad), "--runs-dir", str(tmp_path / "runs")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 1
    (row,) = csv.DictReader(open(next((tmp_path / "runs").iterdir()) / "comparison.csv"))
    assert row["failed_step"].startswith("parameters") and "Did you mean 'epochs'" in row["error"]


@notebook
def test_gate_fails_a_run_below_the_floor(tmp_path):
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(PARAMS / "smoke_a.yaml"), "--runs-dir", str(tmp_path),
           "--min", "AP50=0.99"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 1 and "gate failed: smoke_a AP50=" in out.stdout


@notebook
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
@pytest.mark.parametrize("page_name", ["index.html", "smoke_a/getting_started.html"])
def test_pages_open_offline_in_chromium(batch, page_name):
    _, batch_dir = batch
    path = batch_dir / page_name
    ARTIFACTS.mkdir(exist_ok=True)
    with offline_chromium() as (new_page, blocked):
        page = new_page()
        page.goto(path.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        tables = page.eval_on_selector_all("table", "els => els.length")
        page.screenshot(path=str(ARTIFACTS / (page_name.replace("/", "_") + ".png")), full_page=True)
    assert blocked == []
    assert images and all(done and width > 0 for done, width in images), images
    assert tables >= 1
    if page_name.endswith("getting_started.html"):  # every figure of the notebook, the analysis' among them
        cells = json.loads((batch_dir / "smoke_a" / "getting_started.ipynb").read_text())["cells"]
        drawn = {"".join(c["source"]).splitlines()[0]: sum("image/png" in o.get("data", {}) for o in c.get("outputs", []))
                 for c in cells if c["cell_type"] == "code"}
        for call in ("plot_curves(analysis);", "plot_confusion_matrix(analysis);",
                     "show_worst_images(analysis, valid_ds, n=4, model=model);"):
            assert drawn[call] == 1, (call, drawn)
        assert len(images) >= sum(drawn.values())
    else:  # AP against time, per-class AP, and the runs' precision-recall curves overlaid when a run has them
        curves = any((json.loads((batch_dir / r / "metrics.json").read_text()).get("analysis") or {}).get("curves")
                     for r in ("smoke_a", "smoke_b"))
        assert len(images) == 2 + curves
