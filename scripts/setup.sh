#!/usr/bin/env bash
# Create (or reuse) the project environment in .venv: torch, mmcv, mmdet, fastai and the notebook
# stack, plus a Jupyter kernel named "fpn-lab".
#
# Both `make demo` and `make test` call this first. It is idempotent: a stamp file keyed by the
# content of requirements.txt, this script and the mmcv choice makes a second call return in well
# under a second.
#
# mmcv (FPN_LAB_MMCV):
#   lite (default)  mmcv-lite 2.1.0 from the package index: mmcv's Python code without its compiled
#                   extension. fpn_lab provides the compiled functions its presets call on torchvision's
#                   kernels (fpn_lab/mmdet_adapter/mmcv_ops.py), CPU and CUDA alike: no compiler needed.
#   compiled        mmcv 2.1.0 built from its sdist with compiled ops (CUDA ops too where a GPU and nvcc
#                   are present; 10 to 25 minutes on two cores). mmcv ships no wheel for Python 3.11 +
#                   torch 2.14; the built wheel is cached outside the clone in $FPN_LAB_WHEEL_CACHE
#                   (default ~/.cache/fpn_lab/wheels), keyed by Python, torch, platform and ops.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FPN_LAB_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
KERNEL_NAME=fpn-lab
# unset: what this environment was set up with last (a plain `make test` after `FPN_LAB_MMCV=compiled make
# setup` keeps the compiled mmcv), else lite
MMCV=${FPN_LAB_MMCV:-$(cat "$VENV/.fpn_lab_mmcv" 2>/dev/null || echo lite)}
case $MMCV in
  lite|compiled) ;;
  *) echo "setup: FPN_LAB_MMCV=$MMCV is not understood: expected 'lite' (default: mmcv-lite, no compiler) or 'compiled' (build mmcv's ops from source)." >&2
     exit 2 ;;
esac

stamp_key() {
  { cat "$ROOT/requirements.txt" "$ROOT/scripts/setup.sh"; echo "mmcv=$MMCV"; } | sha256sum | cut -c1-16
}

STAMP=$VENV/.fpn_lab_setup_done
# FPN_LAB_SETUP_PLAN=1: print what the set-up finds and would build (Python, torch, GPU, mmcv ops, cache) and
# stop before installing anything; FPN_LAB_ASSUME_GPU=<major.minor> stands in for a GPU of that compute
# capability (tests/test_device.py checks the GPU branch on a machine without one).
PLAN_ONLY=${FPN_LAB_SETUP_PLAN:-0}
if [[ $PLAN_ONLY != 1 && -f $STAMP && "$(cat "$STAMP")" == "$(stamp_key)" ]]; then
  exit 0
fi

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup: '$PY' was not found; fpn_lab needs Python 3.11 (set PYTHON=/path/to/python3.11)." >&2
  exit 2
fi

if [[ ! -x $VENV/bin/python ]]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
PIP=("$VPY" -m pip install --disable-pip-version-check --progress-bar off)
# pip warns once per package about index folders this machine's pip.conf names but lacks; hide that noise.
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [[ $PLAN_ONLY != 1 ]]; then
  log "build tools"
  quiet_pip -q --upgrade "pip>=24" "setuptools>=77.0.3,<81" wheel
  [[ $MMCV == compiled ]] && quiet_pip -q ninja
  log "torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION"
  quiet_pip -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi
FOUND_TORCH=$("$VPY" -c 'import torch; print(torch.__version__, f"(CUDA {torch.version.cuda})" if torch.version.cuda else "(CPU only)")' 2>/dev/null || echo "none")
log "found: $("$VPY" -c 'import sys; print("Python", sys.version.split()[0])'), torch $FOUND_TORCH (needs $TORCH_VERSION)"

# ---- mmcv, compiled: cached wheel or a build from the sdist ---------------------------------
install_mmcv_compiled() {
  PYTAG=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  PLAT=$("$VPY" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_"))')
  if [[ -n ${FPN_LAB_ASSUME_GPU:-} ]]; then
    HAS_GPU=1 GPU_ARCH=$FPN_LAB_ASSUME_GPU GPU_NAME="(assumed by FPN_LAB_ASSUME_GPU)"
  else
    HAS_GPU=$("$VPY" -c 'import torch; print(int(torch.cuda.is_available()))')
    GPU_ARCH=$("$VPY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null || true)
    GPU_NAME=$("$VPY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || true)
  fi
  OPS=cpu
  if [[ $HAS_GPU == 1 ]]; then
    if command -v nvcc >/dev/null 2>&1; then
      OPS=cuda-sm${GPU_ARCH/./}
      # compile the CUDA kernels for this GPU only (all of torch's architectures would take hours on few cores)
      export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$GPU_ARCH}
      log "GPU: $GPU_NAME, compute capability $GPU_ARCH, nvcc $(nvcc --version | grep -o 'release [0-9.]*'): mmcv with CUDA ops for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    else
      log "GPU: $GPU_NAME, but no nvcc on PATH: mmcv gets CPU ops only (its CUDA ops, e.g. VFNet's deformable convolution, then run on the CPU); install the CUDA toolkit matching torch's CUDA $FOUND_TORCH for CUDA ops"
    fi
  else
    log "no GPU seen by torch: mmcv with CPU ops"
  fi
  CACHE=${FPN_LAB_WHEEL_CACHE:-$HOME/.cache/fpn_lab/wheels}/mmcv-$MMCV_VERSION-$PYTAG-torch$TORCH_VERSION-$PLAT-$OPS
  if [[ $PLAN_ONLY == 1 ]]; then
    echo "plan: mmcv=compiled ops=$OPS arch=${TORCH_CUDA_ARCH_LIST:-none} jobs=${MAX_JOBS:-$(nproc)} cache=$CACHE"
    exit 0
  fi
  mkdir -p "$CACHE"
  WHEEL=$(ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [[ -z $WHEEL ]]; then
    BUILD_LOG=$CACHE/build.log
    log "no cached mmcv wheel in $CACHE: building mmcv $MMCV_VERSION from source with $OPS ops"
    log "(10 to 25 minutes on 2 cores; compiler output goes to $BUILD_LOG)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    build_mmcv() {  # each step returns on failure (errexit does not apply inside `if !`)
      "$VPY" -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" "mmcv==$MMCV_VERSION" \
        || return 1
      tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD" || return 1
      local src=$BUILD/mmcv-$MMCV_VERSION
      # torch 2.14's headers need C++20; mmcv 2.1.0's setup.py asks for C++17.
      sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py" || return 1
      local force=()
      [[ $OPS == cuda* ]] && force=(FORCE_CUDA=1)
      (cd "$src" && env MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${force[@]}" \
          "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$BUILD/dist" .) || return 1
      # Debug info makes the wheel 32 MB; stripped it is ~1.4 MB.
      (cd "$BUILD/dist" && mkdir x && cd x && "$VPY" -m zipfile -e ../mmcv-*.whl . \
          && find . -name '_ext*.so' -exec strip --strip-debug {} + \
          && "$VPY" -m wheel pack . -d "$CACHE")
    }
    if ! build_mmcv >"$BUILD_LOG" 2>&1; then
      tail -n 40 "$BUILD_LOG" >&2
      echo "setup: building mmcv $MMCV_VERSION failed; the full log is $BUILD_LOG" >&2
      exit 1
    fi
    WHEEL=$(ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
    log "cached $WHEEL"
  fi
  log "mmcv from $WHEEL"
  "$VPY" -m pip uninstall -q -y mmcv-lite 2>/dev/null || true  # both install into mmcv/
  quiet_pip -q --no-deps --force-reinstall "$WHEEL"
}

# ---- mmcv-lite: mmcv's Python code; fpn_lab provides its compiled functions on torchvision -----
install_mmcv_lite() {
  if [[ $PLAN_ONLY == 1 ]]; then
    echo "plan: mmcv=lite (mmcv-lite $MMCV_VERSION, fpn_lab's operators on torchvision's kernels; no compiler, no cache)"
    exit 0
  fi
  log "mmcv-lite $MMCV_VERSION (no compiled ops: fpn_lab runs mmcv's operators on torchvision's kernels,"\
      "$("$VPY" -c 'import torch; print("CUDA and CPU" if torch.cuda.is_available() else "CPU")'); nothing to compile)"
  "$VPY" -m pip uninstall -q -y mmcv 2>/dev/null || true  # a compiled mmcv from FPN_LAB_MMCV=compiled
  quiet_pip -q --no-deps --force-reinstall "mmcv-lite==$MMCV_VERSION"
}

if [[ $MMCV == compiled ]]; then install_mmcv_compiled; else install_mmcv_lite; fi

log "requirements.txt"
quiet_pip -q -r "$ROOT/requirements.txt"
# mmcv/mmengine depend on opencv-python (GUI build); albumentations on the headless one. Both
# install into cv2/, so remove the GUI one and reinstall the headless files it overwrote.
if "$VPY" -m pip show -q opencv-python >/dev/null 2>&1; then
  "$VPY" -m pip uninstall -q -y opencv-python
fi
quiet_pip -q --no-deps --force-reinstall \
  "$(grep -E '^opencv-python-headless==' "$ROOT/requirements.txt")"
quiet_pip -q --no-deps -e "$ROOT"

log "Jupyter kernel '$KERNEL_NAME'"
"$VPY" -m ipykernel install --sys-prefix --name "$KERNEL_NAME" --display-name "Python (fpn_lab)" --env NO_ALBUMENTATIONS_UPDATE 1 >/dev/null

log "checking imports"
NO_ALBUMENTATIONS_UPDATE=1 "$VPY" - <<'PY'
import importlib.metadata as md
import cv2, mmcv, mmdet, mmengine, torch, fastai, albumentations
from fpn_lab.mmdet_adapter.mmcv_ext import ops_path
from mmcv.ops import nms  # noqa: F401  (fails where mmcv's operators are missing)
try:
    md.distribution("opencv-python")
    raise SystemExit("setup: opencv-python (GUI build) is installed beside the headless one")
except md.PackageNotFoundError:
    pass
print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, "
      f"mmengine {mmengine.__version__}, fastai {fastai.__version__}, cv2 {cv2.__version__}; "
      f"mmcv operators: {ops_path()}")
PY
echo "$MMCV" >"$VENV/.fpn_lab_mmcv"
stamp_key >"$STAMP"
log "environment ready: $VENV"
