"""Quick modes of the bench scripts run as smoke tests (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("script", ["parse_speed.py", "step_time.py", "train_step_overhead.py", "data_pipeline.py", "coco_eval.py"])
def test_bench_quick_mode_runs(script):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("|") >= 8
