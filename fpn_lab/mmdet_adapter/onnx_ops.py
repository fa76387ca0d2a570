"""mmcv's compiled operators at ONNX export: each replaced, for the export only, by a torchvision
equivalent that ``tests/test_export.py`` shows computes the same, or the export refused with the
operator's name. No silent fallback.

* ``mmcv.ops.DeformConv2d`` (VFNet's head): :class:`TorchvisionDeformConv2d`, which calls
  :func:`fpn_lab.mmdet_adapter.mmcv_ops.deform_conv2d` (``torchvision.ops.deform_conv2d``, the same
  kernel that runs mmcv's operator without its compiled extension; exported by torch's ONNX
  exporter as ONNX ``DeformConv``, opset 19, which onnxruntime runs) with the same weights, offsets
  laid out alike (``[y0, x0, y1, x1, ...]`` per kernel position) and mmcv's zero padding of inputs
  smaller than the kernel.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fpn_lab.errors import ModelError


class TorchvisionDeformConv2d(nn.Module):
    """``mmcv.ops.DeformConv2d.forward`` computed with
    :func:`~fpn_lab.mmdet_adapter.mmcv_ops.deform_conv2d`; shares the wrapped layer's weight (no
    bias: mmcv's layer has none)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        from fpn_lab.mmdet_adapter.mmcv_ops import deform_conv2d

        m = self.layer
        kh, kw = m.kernel_size
        pad_h, pad_w = max(kh - x.size(2), 0), max(kw - x.size(3), 0)
        if pad_h or pad_w:  # as mmcv does for inputs smaller than the kernel
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
            offset = nn.functional.pad(offset, (0, pad_w, 0, pad_h))
        out = deform_conv2d(x, offset, m.weight, stride=m.stride, padding=m.padding, dilation=m.dilation)
        if pad_h or pad_w:
            out = out[:, :, :out.size(2) - pad_h, :out.size(3) - pad_w]
        return out


def mmcv_ops(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer of ``module`` implemented by mmcv's compiled operators
    (classes from ``mmcv.ops``)."""
    return [(name, m) for name, m in module.named_modules() if type(m).__module__.startswith("mmcv.ops")]


@contextlib.contextmanager
def exportable(module: nn.Module):
    """Within the block, ``module``'s mmcv ``DeformConv2d`` layers are replaced by
    :class:`TorchvisionDeformConv2d` (the same weights); restored afterwards.

    Raises:
        ModelError: ``module`` holds another mmcv operator, which has no exportable equivalent
            here; the message names each (layer name and class).
    """
    from mmcv.ops import DeformConv2d

    found = mmcv_ops(module)
    other = [(n, type(m).__name__) for n, m in found if type(m) is not DeformConv2d]
    if other:
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        raise ModelError(f"cannot export to ONNX: {', '.join(f'{n} ({c})' for n, c in other[:5])}{more} use mmcv's compiled "
                         "operator(s), which torch's ONNX exporter cannot translate and fpn_lab has no tested "
                         "replacement for; only mmcv.ops.DeformConv2d is replaced (by torchvision.ops.deform_conv2d).")
    swapped = []
    for name, layer in found:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, TorchvisionDeformConv2d(layer))
        swapped.append((parent, attr, layer))
    try:
        yield [n for n, _ in found]
    finally:
        for parent, attr, layer in swapped:
            setattr(parent, attr, layer)
