"""Quick modes of the bench scripts run as smoke tests (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("script", ["parse_speed.py", "step_time.py", "train_step_overhead.py", "data_pipeline.py", "coco_eval.py",
                                    "inference.py"])
def test_bench_quick_mode_runs(script):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("|") >= 8


def test_accuracy_parity_quick_mode_both_trainers_and_summary(tmp_path):
    runs = [("fpn_lab", "matched"), ("mmdet", "matched"), ("mmdet", "mmdet")]
    for trainer, recipe in runs:
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "accuracy_parity.py"), "--quick", "--trainer", trainer,
                              "--recipe", recipe, "--out", str(tmp_path / f"{trainer}-{recipe}.json")],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        run = json.loads((tmp_path / f"{trainer}-{recipe}.json").read_text())
        assert len(run["epoch_log"]) == run["epochs"] and {"AP", "AP50"} <= set(run["final"])
        assert all(e["steps"] > 0 and 0 <= e["data_wait_share"] < 1 for e in run["epoch_log"])
    summary = subprocess.run([sys.executable, str(ROOT / "bench" / "accuracy_parity.py"), "--summary", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert summary.returncode == 0, summary.stderr[-2000:]
    assert sum(line.startswith(("| fpn_lab |", "| mmdet |")) for line in summary.stdout.splitlines()) == 3


def test_demo_seeds_quick_mode_records_each_seed(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "demo_seeds.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    record = json.loads((tmp_path / "seed0.json").read_text())
    assert record["status"] == "ok" and record["metrics_json"]["params"]["seed"] == 0
    assert [e["epoch"] for e in record["epoch_log"]] == [1] and record["epoch_log"][0]["seconds"] > 0
    assert "| 0 | ok |" in out.stdout and "mean ± sd (min)" in out.stdout
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "demo_seeds.py"), "--ablation", str(tmp_path), "--seeds", "0"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    assert f"| {tmp_path.name} | none | 0 |" in table.stdout


def test_step_speed_quick_mode_measures_each_variant_in_its_own_process():
    variants = ["default", "fpn_lab", "channels_last"]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "step_speed.py"), "--quick", "--variants", ",".join(variants)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == variants


def test_ultralytics_bench_quick_mode_runs_offline():
    pkgs = ROOT / "bench" / ".ultralytics-pkgs"
    if not (pkgs / "ultralytics").is_dir():
        pytest.skip("Ultralytics is not installed for the bench (optional; see bench/ultralytics_yolo.py for the command)")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "ultralytics_yolo.py"), "--quick"], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "| YOLO11n" in out.stdout

