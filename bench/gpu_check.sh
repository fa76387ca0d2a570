#!/usr/bin/env bash
# The project's commands on a machine with a CUDA GPU (issue #18), as one script that must finish within 10 minutes
# on one GPU, the set-up included:
#   1. scripts/setup.sh (the default: mmcv-lite, mmcv's operators on torchvision's CUDA kernels, nothing compiled;
#      FPN_LAB_MMCV=compiled builds mmcv's CUDA ops for this GPU's architecture only instead; timed),
#   2. the test suite's GPU-marked tests (pytest -m gpu),
#   3. the smoke notebook on the GPU, 4. the demo on the GPU with amp off and on,
# then appends set-up time, seconds per epoch, AP and peak GPU memory to bench/RESULTS.md ("GPU check") and keeps
# the console in bench/logs/gpu_check-<time>.log. Nothing else in the project needs a GPU.
#
#   bash bench/gpu_check.sh            # from the repository root, on the GPU machine
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p bench/logs runs/gpu_check
STAMP=$(date +%Y%m%d-%H%M%S)
LOG=bench/logs/gpu_check-$STAMP.log
exec > >(tee "$LOG") 2>&1
export NO_ALBUMENTATIONS_UPDATE=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
t0=$(date +%s)
echo "[gpu_check] $(date -Is) on $(hostname), $(nproc) cores; nvidia-smi:"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "[gpu_check] no nvidia-smi: not a GPU machine" >&2; exit 2; }

bash scripts/setup.sh
t_setup=$(( $(date +%s) - t0 ))
PY=.venv/bin/python
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no GPU after the set-up')"
$PY -c "import torch; import fpn_lab.mmdet_adapter; from fpn_lab.mmdet_adapter.mmcv_ext import ops_path
from mmcv.ops import DeformConv2d
DeformConv2d(2, 2, 3, padding=1).cuda()(torch.randn(1, 2, 5, 5).cuda(), torch.zeros(1, 18, 5, 5).cuda())
print('[gpu_check] mmcv operators on', ops_path(), ': DeformConv2d ran on', torch.cuda.get_device_name(0))"

t=$(date +%s); $PY -m pytest -m gpu -q -p no:cacheprovider; t_tests=$(( $(date +%s) - t ))
t=$(date +%s); $PY -m fpn_lab.cli run params/smoke.yaml --set device=cuda --run-dir "runs/gpu_check/$STAMP-smoke"
t_smoke=$(( $(date +%s) - t ))
for amp in false true; do
  $PY -m fpn_lab.cli run params/demo.yaml --set device=cuda --set amp=$amp --run-dir "runs/gpu_check/$STAMP-demo-amp-$amp"
done
t_total=$(( $(date +%s) - t0 ))

$PY - "$STAMP" "$t_setup" "$t_tests" "$t_smoke" "$t_total" <<'PY'
import json, re, sys
from pathlib import Path
stamp, setup, tests, smoke, total = sys.argv[1], *map(int, sys.argv[2:])
import torch
gpu = torch.cuda.get_device_name(0)
rows = []
for amp in ("false", "true"):
    run = Path(f"runs/gpu_check/{stamp}-demo-amp-{amp}")
    m = json.loads((run / "metrics.json").read_text())
    epochs = [float(x) for x in re.findall(r"fpn_lab\.progress: .*?, ([0-9.]+) s$", (run / "run.log").read_text(), re.M)]
    rows.append(f"| demo, amp {amp} | {', '.join(f'{e:.1f}' for e in epochs)} | {m['timing_s']['training']:.1f} | "
                f"{m['metrics']['AP']:.3f} / {m['metrics']['AP50']:.3f} | {m.get('peak_gpu_mb', 'n/a')} |")
text = "\n".join([
    f"\n### GPU check {stamp} ({gpu}; `bench/gpu_check.sh`, log `bench/logs/gpu_check-{stamp}.log`)\n",
    f"Set-up {setup} s (mmcv CUDA build included when no wheel was cached), GPU tests {tests} s, smoke notebook {smoke} s, "
    f"whole script {total} s.\n",
    "| run | epoch s | training s | AP / AP50 | peak GPU MiB |", "| --- | --- | --- | --- | --- |", *rows, ""])
print(text)
with open("bench/RESULTS.md", "a") as f:
    f.write(text)
PY
echo "[gpu_check] done in ${t_total} s (limit 600 s)"
