"""Device choice (device: auto | cpu | cuda | cuda:N), mixed precision, and the set-up's GPU branch, all checked
without a GPU (torch's answers passed in, the set-up's GPU assumed); the real GPU run is bench/gpu_check.sh."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT
from fpn_lab.device import check_amp, check_device, resolve_device
from fpn_lab.errors import ParamsError


@pytest.mark.parametrize("device, available, count, expected", [
    ("auto", False, 0, "cpu"), ("auto", True, 1, "cuda"), ("cpu", True, 2, "cpu"), ("cuda", True, 1, "cuda"),
    ("cuda:1", True, 2, "cuda:1")])
def test_resolve_device(device, available, count, expected):
    assert resolve_device(device, cuda_available=available, device_count=count) == expected


def test_resolve_device_refuses_what_the_machine_lacks():
    with pytest.raises(ParamsError, match="torch sees no GPU"):
        resolve_device("cuda", cuda_available=False, device_count=0)
    with pytest.raises(ParamsError, match=r"has 2 GPU\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2", cuda_available=True, device_count=2)
    for bad in ("gpu", "cuda:", "CUDA", "mps", 0, None):
        with pytest.raises(ParamsError, match="is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"):
            check_device(bad)


def test_this_machine_resolves_auto_by_torch():
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_amp_only_on_cuda():
    check_amp(True, "cuda:0")
    check_amp(False, "cpu")
    with pytest.raises(ParamsError, match="amp: true needs a CUDA device"):
        check_amp(True, "cpu")


def test_params_check_device_and_amp():
    from fpn_lab.runner.params import validate_params

    nb = ROOT / "notebooks" / "getting_started.ipynb"
    with pytest.raises(ParamsError, match="device: 'gpu'"):
        validate_params({"device": "gpu"}, nb)
    with pytest.raises(ParamsError, match="amp: true needs a CUDA device"):
        validate_params({"device": "cpu", "amp": True}, nb)
    params, _ = validate_params({"device": "cuda:0", "amp": True}, nb)  # checked against the machine at Run.start
    assert params["device"] == "cuda:0"


def test_learner_refuses_amp_for_a_cpu_model():
    from fpn_lab.core.class_map import ClassMap
    from fpn_lab.data.dataloaders import Dataset, make_dataloaders
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import SingleSplitSplitter
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.models.build import build_model

    parser = VOCBBoxParser(ROOT / "data" / "fridge" / "annotations", ROOT / "data" / "fridge" / "images")
    records = parser.parse(SingleSplitSplitter())[0]
    ds = Dataset(records[:2], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    with pytest.raises(ParamsError, match="amp: true needs a CUDA device; this run computes on 'cpu'"):
        make_learner(make_dataloaders(ds, ds, 2), model, ClassMap(parser.class_map.names), amp=True)


def _plan(**env):
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FPN_LAB_SETUP_PLAN": "1", **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="needs the set-up's .venv")
def test_setup_gpu_branch_builds_for_that_gpu_only():
    out = _plan(FPN_LAB_ASSUME_GPU="9.0", PATH=os.environ["PATH"], FPN_LAB_MMCV="compiled")
    import shutil

    if shutil.which("nvcc"):
        assert "ops=cuda-sm90 arch=9.0" in out and out.rstrip().endswith("-cuda-sm90")
        assert "TORCH_CUDA_ARCH_LIST=9.0" in out
    else:
        assert "no nvcc on PATH: mmcv gets CPU ops only" in out and "ops=cpu" in out
    assert "found: Python 3.11" in out and "needs 2.14.1" in out


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="needs the set-up's .venv")
def test_setup_without_gpu_plans_cpu_ops():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = _plan(FPN_LAB_MMCV="compiled")
    assert "no GPU seen by torch: mmcv with CPU ops" in out
    assert "ops=cpu arch=none" in out and out.rstrip().endswith("-cpu")


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="needs the set-up's .venv")
def test_setup_default_is_mmcv_lite_without_a_compiler_or_cache():
    out = _plan(FPN_LAB_ASSUME_GPU="9.0")  # with or without a GPU: nothing to compile
    assert "plan: mmcv=lite" in out and "no compiler" in out and "cache=" not in out
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FPN_LAB_SETUP_PLAN": "1", "FPN_LAB_MMCV": "fast"})
    assert proc.returncode == 2 and "FPN_LAB_MMCV=fast is not understood" in proc.stderr


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("overrides, message", [
    (["device=cuda"], "torch sees no GPU"), (["amp=true"], "amp: true needs a CUDA device; this run computes on 'cpu'"),
    (["sync_bn=true"], "sync_bn: true needs a CUDA device")])
def test_headless_run_checks_the_device_before_a_kernel_starts(tmp_path, overrides, message):
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run_dir = tmp_path / "run"
    args = [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "fpn_lab.cli", "run", "params/smoke.yaml", "--run-dir", str(run_dir),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]
    assert not run_dir.exists()  # refused before a run folder was made (device: auto resolved here)
