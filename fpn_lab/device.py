"""The device a run computes on (the ``device`` parameter) and mixed precision (``amp``).

``device``: ``"auto"`` (a GPU when torch sees one, else the CPU), ``"cpu"``, ``"cuda"`` (GPU 0, or
under torchrun each process's ``LOCAL_RANK``) or ``"cuda:N"``. ``amp: true`` trains with fastai's
``MixedPrecision`` (torch autocast to float16 with a gradient scaler), on CUDA only.
"""

from __future__ import annotations

import re

from fpn_lab.errors import ParamsError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(device) -> None:
    """Raise :class:`ParamsError` unless ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ParamsError(f"device: {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N' (N a GPU index); 'auto' "
                          "takes the GPU when torch sees one.")


def resolve_device(device: str, *, cuda_available: bool | None = None, device_count: int | None = None) -> str:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for the ``device`` parameter on this machine.

    ``cuda_available`` and ``device_count`` default to torch's answers (``torch.cuda.is_available()``,
    ``torch.cuda.device_count()``); tests pass them.

    Raises:
        ParamsError: a malformed value, CUDA asked for where torch sees no GPU (with torch's CUDA
            build, so a CPU-only torch is told apart from a missing driver), or a GPU index beyond
            the GPUs there are.
    """
    check_device(device)
    if device == "cpu":
        return device
    if cuda_available is None or device_count is None:
        import torch

        cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
        device_count = (torch.cuda.device_count() if cuda_available else 0) if device_count is None else device_count
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if not cuda_available:
        import torch

        build = f"torch {torch.__version__} built for CUDA {torch.version.cuda}" if torch.version.cuda else \
            f"torch {torch.__version__} is a CPU-only build"
        raise ParamsError(f"device: {device!r}, but torch sees no GPU ({build}); use device: auto or cpu, or check the "
                          "GPU driver (nvidia-smi).")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= device_count:
        raise ParamsError(f"device: {device!r}, but this machine has {device_count} GPU(s) (cuda:0 to "
                          f"cuda:{device_count - 1}).")
    return device


def check_amp(amp: bool, device: str) -> None:
    """Raise :class:`ParamsError` for ``amp`` on a device that is not CUDA (``device`` resolved).

    fastai's ``MixedPrecision`` scales float16 gradients with torch's CUDA gradient scaler; on the
    CPU float16 convolutions are slower than float32, so there is nothing to gain."""
    if amp and not str(device).startswith("cuda"):
        raise ParamsError(f"amp: true needs a CUDA device; this run computes on {device!r}. Set amp: false (or run "
                          "on a GPU with device: auto / cuda).")


def check_device_params(params: dict) -> None:
    """A notebook run's ``device`` (:func:`check_device`) and, on the CPU, its ``amp``
    (:func:`check_amp`); absent keys are not checked (``"auto"`` is checked where it resolves).

    Raises:
        ParamsError: see :func:`check_device` and :func:`check_amp`.
    """
    if "device" in params:
        check_device(params["device"])
        if params["device"] == "cpu":
            check_amp(params.get("amp", False), "cpu")
