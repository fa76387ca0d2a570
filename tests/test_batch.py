"""fpn-lab batch: two smoke runs and one failing run give the comparison page and a non-zero exit."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.notebook
PARAMS = ROOT / "tests" / "data" / "params"


def test_batch_with_a_failing_run(tmp_path):
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(PARAMS / "smoke_a.yaml"), str(PARAMS / "smoke_b.yaml"),
           str(PARAMS / "broken.yaml"), "--runs-dir", str(tmp_path), "--name", "cmp", "--min", "AP50=0.0"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 1, out.stdout + out.stderr
    batch = tmp_path / "cmp"
    rows = {r["run"]: r for r in csv.DictReader(open(batch / "comparison.csv"))}
    assert rows["smoke_a"]["status"] == rows["smoke_b"]["status"] == "ok", out.stdout
    assert rows["smoke_a"]["neck"] == "YOLOXPAFPN" and rows["smoke_b"]["neck"] == "FPN"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["failed_step"] == "Parameters"
    assert "unknown selection index 2" in rows["broken"]["error"]
    page = (batch / "index.html").read_text()
    assert page.count('<tr class="ok">') == 2 and "failed at step <b>Parameters</b>" in page
    assert 'href="smoke_a/getting_started.html"' in page and "data:image/png;base64," in page


def test_gate_fails_a_run_below_the_floor(tmp_path):
    cmd = [sys.executable, "-m", "fpn_lab.cli", "batch", str(PARAMS / "smoke_a.yaml"), "--runs-dir", str(tmp_path),
           "--min", "AP50=0.99"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 1 and "gate failed: smoke_a AP50=" in out.stdout
