"""mmcv's compiled operators on torchvision's kernels: the functions of ``mmcv._ext`` that
fpn_lab's presets call, for ``mmcv-lite`` (mmcv 2.1's Python code without its compiled extension).

:mod:`~fpn_lab.mmdet_adapter.mmcv_ext` registers them as ``mmcv._ext``; each takes the arguments
mmcv 2.1's Python wrappers pass to the compiled function of the same name (output tensors filled
in place), so mmcv's autograd functions, modules and ``batched_nms`` run unchanged:

================================  =========================================================
``mmcv._ext`` function            computed with
================================  =========================================================
``nms``                           ``torchvision.ops.nms`` (``offset=0`` only)
``deform_conv_*``                 ``torchvision.ops.deform_conv2d`` and its backward kernel
``modulated_deform_conv_*``       the same, with the mask (DCNv2)
``roi_align_*``                   ``torchvision.ops.roi_align`` and its backward kernel
                                  (``pool_mode="avg"`` only)
``sigmoid_focal_loss_*``          the closed forms of mmcv's CUDA kernel, in torch
``ms_deform_attn_*``              mmcv's own PyTorch path (``multi_scale_deformable_attn_pytorch``)
================================  =========================================================

:func:`deform_conv2d` is also what the ONNX export puts in place of mmcv's deformable
convolution layers (:mod:`~fpn_lab.mmdet_adapter.onnx_ops`).
"""

from __future__ import annotations

import sys

import torch

from fpn_lab.errors import ModelError, OpNotAvailableError


def _tv():
    import torchvision.ops  # noqa: F401  (registers torch.ops.torchvision)

    return torch.ops.torchvision


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Indices (``int64[K]``, by decreasing score) of the boxes kept by greedy NMS: a box is
    dropped when its IoU with a kept, higher-scoring box is greater than ``iou_threshold``.

    ``boxes``: ``float[N, 4]`` xyxy; ``scores``: ``float[N]``. Equal scores keep the lower index
    first. ``offset=1`` (mmcv's legacy ``+1`` in widths and heights) is refused.
    """
    if int(offset) != 0:
        raise OpNotAvailableError(f"mmcv nms with offset={offset} is not provided: torchvision's NMS computes areas as "
                                  "(x2 - x1) * (y2 - y1), mmcv's legacy offset=1 adds 1 to each side. Fix: use "
                                  "offset=0 (mmdet 3.x configs do).")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # torchvision sorts the scores itself; a stable pre-sort fixes the order of equal scores.
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = _tv().nms(boxes[order].contiguous(), scores[order].contiguous(), float(iou_threshold))
    return order[keep]


def _check_finite(op: str, **tensors: torch.Tensor) -> None:
    # torchvision's CPU deformable convolution reads outside the feature map given a NaN offset
    # and crashes the process (segmentation fault); a RuntimeError is reported as a NaN loss.
    if torch.compiler.is_compiling():  # traced for ONNX export: no data-dependent branch
        return
    present = {name: t for name, t in tensors.items() if t is not None and t.numel()}
    if not present:  # an empty batch: nothing to read
        return
    finite = torch.stack([torch.isfinite(t).all() for t in present.values()])
    if not bool(finite.all()):  # one device synchronisation for all tensors
        bad = [name for name, ok in zip(present, finite.tolist()) if not ok]
        raise RuntimeError(f"{op}: non-finite {', '.join(bad)} (NaN or inf); the kernel would read outside the "
                           "feature map")


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> torch.Tensor:
    """Deformable convolution (DCNv1; DCNv2 with ``mask``), differentiable in every tensor.

    Args:
        input: ``float[B, C_in, H, W]``.
        offset: ``float[B, 2 * G_off * kh * kw, H_out, W_out]``, per offset group and kernel
            position ``(dy, dx)`` in input pixels, laid out as mmcv's and torchvision's
            ``[y0, x0, y1, x1, ...]``.
        weight: ``float[C_out, C_in / G, kh, kw]`` (``G`` weight groups, from the shapes).
        mask: ``float[B, G_off * kh * kw, H_out, W_out]`` modulation (DCNv2), or None.
        bias: ``float[C_out]`` or None.
        stride, padding, dilation: ``(h, w)`` pairs.

    Returns:
        ``float[B, C_out, H_out, W_out]``.

    Raises:
        RuntimeError: a non-finite input, offset or mask (which would crash the kernel).
    """
    _check_finite("deform_conv2d", input=input, offset=offset, mask=mask)
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    return tv_deform_conv2d(input, offset, weight, bias, stride=tuple(stride), padding=tuple(padding),
                            dilation=tuple(dilation), mask=mask)


def _groups(op, input, weight, offset, group, deformable_group, kh, kw):
    if input.size(1) != weight.size(1) * group or offset.size(1) != 2 * deformable_group * kh * kw:
        raise ModelError(f"{op}: shapes do not fit group={group}, deformable_group={deformable_group}: input "
                         f"{tuple(input.shape)}, weight {tuple(weight.shape)}, offset {tuple(offset.shape)}")


def _deform_backward(grad, input, weight, offset, mask, bias, stride, padding, dilation, group, deformable_group):
    """torchvision's backward kernel: ``(grad_input, grad_weight, grad_offset, grad_mask, grad_bias)``."""
    _check_finite("deform_conv2d backward", input=input, offset=offset, mask=mask)
    use_mask = mask is not None
    mask = mask if use_mask else input.new_zeros(input.size(0), 1)  # as torchvision's own wrapper passes
    bias = bias if bias is not None and bias.numel() else input.new_zeros(weight.size(0))
    return _tv()._deform_conv2d_backward(grad.contiguous(), input.contiguous(), weight.contiguous(),
                                         offset.contiguous(), mask.contiguous(), bias, stride[0], stride[1],
                                         padding[0], padding[1], dilation[0], dilation[1], group, deformable_group,
                                         use_mask)


class _BackwardOnce:
    """mmcv's ``DeformConv2dFunction.backward`` asks the extension twice (input and offset
    gradients, then the weight's) with the same tensors; torchvision's kernel gives all three in
    one pass. Keeps the weight gradient of the last call for the second."""

    key: tuple = ()
    grad_weight: torch.Tensor | None = None

    @classmethod
    def put(cls, tensors, grad_weight):
        cls.key, cls.grad_weight = tuple(tensors), grad_weight

    @classmethod
    def take(cls, tensors):
        hit = len(cls.key) == len(tensors) and all(a is b for a, b in zip(cls.key, tensors))
        out = cls.grad_weight if hit else None
        cls.key, cls.grad_weight = (), None
        return out


def deform_conv_forward(input, weight, offset, output, columns, ones, kW, kH, dW, dH, padW, padH, dilationW,
                        dilationH, group, deformable_group, im2col_step):
    _groups("deform_conv", input, weight, offset, group, deformable_group, kH, kW)
    output.copy_(deform_conv2d(input, offset, weight, stride=(dH, dW), padding=(padH, padW),
                               dilation=(dilationH, dilationW)))


def deform_conv_backward_input(input, offset, gradOutput, gradInput, gradOffset, weight, columns, kW, kH, dW, dH,
                               padW, padH, dilationW, dilationH, group, deformable_group, im2col_step):
    g_in, g_w, g_off, _, _ = _deform_backward(gradOutput, input, weight, offset, None, None, (dH, dW), (padH, padW),
                                              (dilationH, dilationW), group, deformable_group)
    gradInput.copy_(g_in)
    gradOffset.copy_(g_off)
    _BackwardOnce.put((input, offset, gradOutput), g_w)


def deform_conv_backward_parameters(input, offset, gradOutput, gradWeight, columns, ones, kW, kH, dW, dH, padW, padH,
                                    dilationW, dilationH, group, deformable_group, scale, im2col_step):
    g_w = _BackwardOnce.take((input, offset, gradOutput))
    if g_w is None or g_w.shape != gradWeight.shape:
        weight = gradWeight.new_zeros(gradWeight.shape)  # the weight's value does not enter its own gradient
        g_w = _deform_backward(gradOutput, input, weight, offset, None, None, (dH, dW), (padH, padW),
                               (dilationH, dilationW), group, deformable_group)[1]
    gradWeight.add_(g_w, alpha=scale)


def modulated_deform_conv_forward(input, weight, bias, ones, offset, mask, output, columns, kernel_h, kernel_w,
                                  stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, deformable_group,
                                  with_bias):
    _groups("modulated_deform_conv", input, weight, offset, group, deformable_group, kernel_h, kernel_w)
    output.copy_(deform_conv2d(input, offset, weight, mask=mask, bias=bias if with_bias else None,
                               stride=(stride_h, stride_w), padding=(pad_h, pad_w),
                               dilation=(dilation_h, dilation_w)))


def modulated_deform_conv_backward(input, weight, bias, ones, offset, mask, columns, grad_input, grad_weight,
                                   grad_bias, grad_offset, grad_mask, grad_output, kernel_h, kernel_w, stride_h,
                                   stride_w, pad_h, pad_w, dilation_h, dilation_w, group, deformable_group, with_bias):
    g_in, g_w, g_off, g_mask, g_b = _deform_backward(grad_output, input, weight, offset, mask,
                                                     bias if with_bias else None, (stride_h, stride_w),
                                                     (pad_h, pad_w), (dilation_h, dilation_w), group,
                                                     deformable_group)
    grad_input.copy_(g_in)
    grad_weight.copy_(g_w)
    grad_offset.copy_(g_off)
    grad_mask.copy_(g_mask)
    if with_bias:
        grad_bias.copy_(g_b)


def _avg_only(pool_mode):
    if int(pool_mode) != 1:
        raise OpNotAvailableError("mmcv roi_align with pool_mode='max' is not provided (torchvision's RoIAlign "
                                  "averages its samples). Fix: use pool_mode='avg' (mmdet's configs do), or the "
                                  "compiled mmcv (FPN_LAB_MMCV=compiled make setup).")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned):
    _avg_only(pool_mode)
    output.copy_(_tv().roi_align(input, rois.to(input.dtype), float(spatial_scale), int(aligned_height),
                                 int(aligned_width), int(sampling_ratio), bool(aligned)))


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height, aligned_width,
                       spatial_scale, sampling_ratio, pool_mode, aligned):
    _avg_only(pool_mode)
    b, c, h, w = grad_input.shape
    grad_input.copy_(_tv()._roi_align_backward(grad_output, rois.to(grad_output.dtype), float(spatial_scale),
                                                int(aligned_height), int(aligned_width), b, c, h, w,
                                                int(sampling_ratio), bool(aligned)))


def _focal_terms(input, target):
    p = torch.sigmoid(input)
    tiny = torch.finfo(input.dtype).tiny
    classes = torch.arange(input.size(1), device=input.device)
    positive = (target.view(-1, 1) == classes).to(input.dtype)  # target == num_classes: background
    return p, tiny, positive


def _class_weight(weight, target, like):
    if weight is None or weight.numel() == 0:
        return 1.0
    return weight[target.clamp(max=weight.numel() - 1)].view(-1, 1).to(like.dtype)


def sigmoid_focal_loss_forward(input, target, weight, output, gamma, alpha):
    """mmcv's per-element sigmoid focal loss (Lin et al. 2017, eq. 5) for ``input`` logits
    ``float[N, C]`` and ``target`` labels ``int64[N]`` (``C`` = background)."""
    p, tiny, pos = _focal_terms(input, target)
    term_p = (1 - p).pow(gamma) * torch.log(p.clamp(min=tiny))
    term_n = p.pow(gamma) * torch.log((1 - p).clamp(min=tiny))
    loss = -pos * alpha * term_p - (1 - pos) * (1 - alpha) * term_n
    output.copy_(loss * _class_weight(weight, target, input))


def sigmoid_focal_loss_backward(input, target, weight, grad_input, gamma, alpha):
    p, tiny, pos = _focal_terms(input, target)
    term_p = (1 - p).pow(gamma) * (1 - p - gamma * p * torch.log(p.clamp(min=tiny)))
    term_n = p.pow(gamma) * (gamma * (1 - p) * torch.log((1 - p).clamp(min=tiny)) - p)
    grad = -pos * alpha * term_p - (1 - pos) * (1 - alpha) * term_n
    grad_input.copy_(grad * _class_weight(weight, target, input))


def _ms_deform_attn(value, spatial_shapes, sampling_loc, attn_weight):
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_loc, attn_weight)


def ms_deform_attn_forward(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                           attention_weights, im2col_step):
    return _ms_deform_attn(value, value_spatial_shapes, sampling_locations, attention_weights)


def ms_deform_attn_backward(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                            attention_weights, grad_output, grad_value, grad_sampling_loc, grad_attn_weight,
                            im2col_step):
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (value, sampling_locations, attention_weights)]
        out = _ms_deform_attn(leaves[0], value_spatial_shapes, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, leaves, grad_output)
    for dst, g in zip((grad_value, grad_sampling_loc, grad_attn_weight), grads):
        dst.copy_(g)


#: mmcv layer classes whose operators the functions above provide (what :func:`check_model` accepts).
PROVIDED_LAYERS = ("DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2d", "ModulatedDeformConv2dPack",
                   "RoIAlign", "MultiScaleDeformableAttention", "SigmoidFocalLoss")


def check_model(module: torch.nn.Module, preset_name: str) -> None:
    """Refuse a model holding mmcv layers whose operators this module does not provide: layers of
    an ``mmcv.ops`` module that loads the compiled extension, other than :data:`PROVIDED_LAYERS`
    (layers written in PyTorch, such as NAS-FPN's merge cells, pass). Nothing is refused where
    mmcv's compiled extension is in use; a function of the extension that a layer reaches anyway
    raises :class:`~fpn_lab.errors.OpNotAvailableError` when called.

    Raises:
        OpNotAvailableError: names the preset and each such layer (name and class).
    """
    from fpn_lab.mmdet_adapter.mmcv_ext import ops_path

    if ops_path() != "torchvision":
        return
    missing = [(n, type(m).__name__) for n, m in module.named_modules()
               if type(m).__module__.startswith("mmcv.ops") and type(m).__name__ not in PROVIDED_LAYERS
               and hasattr(sys.modules[type(m).__module__], "ext_module")]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        listed = ", ".join(f"{n} ({c})" for n, c in missing[:5]) + more
        raise OpNotAvailableError(
            f"preset '{preset_name}' uses mmcv operator(s) that fpn_lab does not provide without mmcv's compiled "
            f"extension: {listed}. Provided: {', '.join(PROVIDED_LAYERS)} and NMS. Fix: pick another preset, or "
            "install the compiled mmcv: FPN_LAB_MMCV=compiled make setup.")
