"""mmcv's compiled operators on torchvision's kernels (fpn_lab.mmdet_adapter.mmcv_ops), each
against an independent reference in plain torch, through mmcv's own Python wrappers: NMS against a
Python loop, deformable convolution against bilinear sampling plus a matmul, RoIAlign against a
sampled reference, sigmoid focal loss against its formula; forward and gradients, with edge cases.

On the default set-up (mmcv-lite) these run on fpn_lab's kernels; in an environment with mmcv's
compiled extension they are skipped unless FPN_LAB_MMCV=lite (bench/ops_parity.py compares both).
"""

from __future__ import annotations

import math

import pytest
import torch

import fpn_lab.mmdet_adapter  # noqa: F401  (registers the kernels before mmcv.ops is imported)
from fpn_lab.errors import ModelError, OpNotAvailableError
from fpn_lab.mmdet_adapter import mmcv_ext
from fpn_lab.mmdet_adapter.mmcv_ops import check_model

pytestmark = pytest.mark.skipif(mmcv_ext.ops_path() != "torchvision",
                                reason="mmcv's compiled extension is in use (FPN_LAB_MMCV=lite tests fpn_lab's kernels)")


def test_registered_as_mmcv_ext():
    import mmcv.ops  # noqa: F401
    import sys

    assert sys.modules["mmcv._ext"] is mmcv_ext.EXT
    assert mmcv_ext.ops_path() == "torchvision"


# ---- NMS ------------------------------------------------------------------------------------------


def iou(a, b):
    iw = (min(a[2], b[2]) - max(a[0], b[0])).clamp(min=0)
    ih = (min(a[3], b[3]) - max(a[1], b[1])).clamp(min=0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def nms_loop(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def random_boxes(n, seed, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size / 3  # crowded: many pairs overlap
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.1, 0.3, 0.5])
def test_nms_matches_python_loop(seed, thr):
    from mmcv.ops import nms

    boxes, scores = random_boxes(60, seed)
    dets, keep = nms(boxes, scores, thr)
    assert keep.tolist() == nms_loop(boxes, scores, thr)
    assert len(keep) < 60  # the random boxes overlap: something was suppressed
    torch.testing.assert_close(dets[:, 4], scores[keep])


def test_nms_equal_scores_keep_lower_index_first():
    from mmcv.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], dtype=torch.float32)
    scores = torch.full((4,), 0.5)
    _, keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == nms_loop(boxes, scores, 0.5) == [0, 2]


def test_nms_no_boxes_and_batched_nms_per_class():
    from mmcv.ops import batched_nms, nms

    dets, keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and dets.shape == (0, 5)
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1]), dict(type="nms", iou_threshold=0.5))
    assert keep.tolist() == [0, 2]  # box 1 suppressed by box 0 (same class); box 2 is another class


def test_nms_non_contiguous_inputs():
    from mmcv.ops import nms

    boxes, scores = random_boxes(40, 3)
    boxes_nc, scores_nc = boxes.t().contiguous().t(), torch.stack([scores, scores], 1)[:, 0]
    assert not boxes_nc.is_contiguous() and not scores_nc.is_contiguous()
    _, keep = nms(boxes_nc, scores_nc, 0.5)
    assert keep.tolist() == nms_loop(boxes, scores, 0.5)


def test_nms_legacy_offset_refused():
    from mmcv.ops import nms

    boxes, scores = random_boxes(5, 0)
    with pytest.raises(OpNotAvailableError, match="offset=1"):
        nms(boxes, scores, 0.5, offset=1)


# ---- deformable convolution -------------------------------------------------------------------------


def bilinear(img, y, x):
    """img [C, H, W]; y, x float[...]: values [C, ...], zero outside (each corner on its own)."""
    h, w = img.shape[-2:]
    y0, x0 = torch.floor(y), torch.floor(x)
    out = 0
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            wt = (1 - (y - yy).abs()) * (1 - (x - xx).abs())
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            v = img[:, yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()]
            out = out + v * (wt * valid)
    return out


def deform_conv_reference(x, offset, weight, mask=None, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                          groups=1, deform_groups=1):
    b, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cpg = cin // deform_groups
    outs = []
    for n in range(b):
        cols = []  # [cin, kh*kw, ho*wo]
        for g in range(deform_groups):
            per_k = []
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    base_y = torch.arange(ho).view(-1, 1) * stride[0] - padding[0] + i * dilation[0]
                    base_x = torch.arange(wo).view(1, -1) * stride[1] - padding[1] + j * dilation[1]
                    dy = offset[n, g * 2 * kh * kw + 2 * k]
                    dx = offset[n, g * 2 * kh * kw + 2 * k + 1]
                    v = bilinear(x[n, g * cpg:(g + 1) * cpg], base_y + dy, base_x + dx)
                    if mask is not None:
                        v = v * mask[n, g * kh * kw + k]
                    per_k.append(v.reshape(cpg, -1))
            cols.append(torch.stack(per_k, 1))
        cols = torch.cat(cols, 0)
        cg, og = cin // groups, cout // groups
        out = torch.cat([weight[gi * og:(gi + 1) * og].reshape(og, -1)
                         @ cols[gi * cg:(gi + 1) * cg].reshape(cg * kh * kw, -1) for gi in range(groups)], 0)
        outs.append(out.view(cout, ho, wo))
    out = torch.stack(outs)
    return out + bias.view(1, -1, 1, 1) if bias is not None else out


CASES = [  # (B, C_in, C_out, H, W, k, stride, padding, dilation, groups, deform_groups)
    (2, 4, 6, 7, 9, 3, 1, 1, 1, 1, 1),
    (1, 4, 4, 8, 8, 3, 2, 1, 1, 2, 2),
    (2, 6, 4, 9, 7, 3, 1, 2, 2, 1, 3),
    (1, 4, 2, 6, 6, 1, 1, 0, 1, 1, 1),
]


def deform_inputs(case, seed, scale=2.0, modulated=False):
    b, cin, cout, h, w, k, s, p, d, g, dg = case
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
    x = torch.randn(b, cin, h, w, generator=gen, dtype=torch.float64)
    offset = (torch.rand(b, 2 * dg * k * k, ho, wo, generator=gen, dtype=torch.float64) - 0.5) * 2 * scale
    weight = torch.randn(cout, cin // g, k, k, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, dg * k * k, ho, wo, generator=gen, dtype=torch.float64) if modulated else None
    return x, offset, weight, mask, dict(stride=(s, s), padding=(p, p), dilation=(d, d), groups=g, deform_groups=dg)


def leaves(*ts):
    return [t.clone().requires_grad_() if t is not None else None for t in ts]


@pytest.mark.parametrize("case", CASES)
def test_deform_conv_forward_and_gradients(case):
    from mmcv.ops import deform_conv2d

    x, offset, weight, _, kw = deform_inputs(case, seed=sum(case), scale=3.0)  # offsets reach outside the map
    a = leaves(x, offset, weight)
    out = deform_conv2d(a[0], a[1], a[2], kw["stride"], kw["padding"], kw["dilation"], kw["groups"],
                        kw["deform_groups"])
    r = leaves(x, offset, weight)
    ref = deform_conv_reference(*r, **kw)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for mine, theirs, name in zip(a, r, ("input", "offset", "weight")):
        torch.testing.assert_close(mine.grad, theirs.grad, msg=lambda m, n=name: f"{n}: {m}")
        assert mine.grad.abs().sum() > 0


@pytest.mark.parametrize("case", CASES[:3])
def test_modulated_deform_conv_forward_and_gradients(case):
    from mmcv.ops import modulated_deform_conv2d

    x, offset, weight, mask, kw = deform_inputs(case, seed=7 + sum(case), modulated=True)
    bias = torch.randn(weight.size(0), dtype=torch.float64)
    a = leaves(x, offset, mask, weight, bias)
    out = modulated_deform_conv2d(a[0], a[1], a[2], a[3], a[4], kw["stride"], kw["padding"], kw["dilation"],
                                  kw["groups"], kw["deform_groups"])
    r = leaves(x, offset, mask, weight, bias)
    ref = deform_conv_reference(r[0], r[1], r[3], mask=r[2], bias=r[4], **kw)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for mine, theirs, name in zip(a, r, ("input", "offset", "mask", "weight", "bias")):
        torch.testing.assert_close(mine.grad, theirs.grad, msg=lambda m, n=name: f"{n}: {m}")


def test_deform_conv_weight_gradient_alone():
    """Only the weight needs a gradient (input and offset frozen): the weight's own backward call."""
    from mmcv.ops import deform_conv2d

    x, offset, weight, _, kw = deform_inputs(CASES[0], seed=3)
    w = weight.clone().requires_grad_()
    deform_conv2d(x, offset, w, 1, 1).sum().backward()
    r = weight.clone().requires_grad_()
    deform_conv_reference(x, offset, r, padding=(1, 1)).sum().backward()
    torch.testing.assert_close(w.grad, r.grad)


def test_deform_conv_layers_input_smaller_than_kernel_and_channels_last():
    """mmcv's DeformConv2d pads an input smaller than its kernel; NHWC (non-contiguous) inputs work."""
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2dPack

    torch.manual_seed(0)
    layer = DeformConv2d(3, 5, 3, padding=1).double()
    for size in (1, 2):  # a 3x3 kernel on a 1x1 and a 2x2 map: mmcv pads the map, then crops the output
        x = torch.randn(1, 3, size, size, dtype=torch.float64)
        offset = torch.randn(1, 18, size, size, dtype=torch.float64) * 0.7
        out = layer(x, offset)
        assert out.shape == (1, 5, size, size)
        torch.testing.assert_close(out, deform_conv_reference(x, offset, layer.weight, padding=(1, 1)))

    pack = ModulatedDeformConv2dPack(4, 4, 3, padding=1).double()
    torch.nn.init.normal_(pack.conv_offset.weight, std=0.1)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    torch.testing.assert_close(pack(nhwc), pack(x))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_deform_conv_non_finite_offset_is_an_error_not_a_crash(bad):
    from mmcv.ops import deform_conv2d

    x, offset, weight, _, _ = deform_inputs(CASES[0], seed=1)
    offset[0, 0, 0, 0] = bad
    with pytest.raises(RuntimeError, match="non-finite offset"):
        deform_conv2d(x, offset, weight, 1, 1)


# ---- RoIAlign ---------------------------------------------------------------------------------------


def roi_align_reference(feat, rois, out_hw, scale, ratio, aligned):
    """RoIAlign as in Detectron / mmcv: per bin, the mean of ratio x ratio bilinear samples
    (clamped to the border, zero beyond one pixel outside)."""
    ph, pw = out_hw
    c, h, w = feat.shape[1:]
    res = []
    for roi in rois:
        img = feat[int(roi[0])]
        shift = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (roi[1:] * scale - shift).unbind()
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
        bh, bw = rh / ph, rw / pw
        gh = ratio if ratio > 0 else int(math.ceil(float(rh / ph)))
        gw = ratio if ratio > 0 else int(math.ceil(float(rw / pw)))
        out = torch.zeros(c, ph, pw, dtype=feat.dtype)
        for i in range(ph):
            for j in range(pw):
                acc = 0
                for iy in range(gh):
                    for ix in range(gw):
                        y = y1 + i * bh + (iy + 0.5) * bh / gh
                        x = x1 + j * bw + (ix + 0.5) * bw / gw
                        if y < -1.0 or y > h or x < -1.0 or x > w:
                            continue
                        y, x = y.clamp(min=0), x.clamp(min=0)
                        y = y.clamp(max=h - 1) if y >= h - 1 else y
                        x = x.clamp(max=w - 1) if x >= w - 1 else x
                        acc = acc + bilinear(img, y.view(1), x.view(1))[:, 0]
                out[:, i, j] = acc / max(gh * gw, 1)
        res.append(out)
    return torch.stack(res) if res else feat.new_zeros(0, c, ph, pw)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [0, 2])
def test_roi_align_forward_and_gradient(aligned, ratio):
    from mmcv.ops import roi_align

    gen = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 3, 10, 12, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0, 1.3, 2.2, 15.7, 11.9], [1, 0.0, 0.0, 4.0, 4.0], [1, 18.0, 14.0, 26.0, 22.0],
                         [0, -3.0, -2.0, 2.5, 3.5]], dtype=torch.float64)  # partly outside, one past the map
    a, r = feat.clone().requires_grad_(), feat.clone().requires_grad_()
    out = roi_align(a, rois, (3, 2), 0.5, ratio, "avg", aligned)
    ref = roi_align_reference(r, rois, (3, 2), 0.5, ratio, aligned)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(a.grad, r.grad)
    assert a.grad.abs().sum() > 0


def test_roi_align_no_rois_and_max_mode_refused():
    from mmcv.ops import roi_align

    feat = torch.randn(1, 2, 5, 5)
    assert roi_align(feat, torch.zeros(0, 5), (2, 2), 1.0, 0, "avg", True).shape == (0, 2, 2, 2)
    with pytest.raises(OpNotAvailableError, match="pool_mode='max'"):
        roi_align(feat, torch.tensor([[0, 0, 0, 3, 3.0]]), (2, 2), 1.0, 0, "max", True)


# ---- sigmoid focal loss, multi-scale deformable attention -------------------------------------------


def focal_reference(logits, target, gamma, alpha):
    onehot = torch.nn.functional.one_hot(target, logits.size(1) + 1)[:, :-1].to(logits.dtype)
    p = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    pt = p * onehot + (1 - p) * (1 - onehot)
    return (alpha * onehot + (1 - alpha) * (1 - onehot)) * (1 - pt) ** gamma * ce


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_loss_forward_and_gradient(reduction):
    from mmcv.ops import sigmoid_focal_loss

    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 4, generator=gen, dtype=torch.float64) * 3
    target = torch.tensor([0, 1, 2, 3, 4, 4, 0, 2, 4, 1, 3, 4])  # 4 = background
    a, r = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    out = sigmoid_focal_loss(a, target, 2.0, 0.25, None, reduction)
    ref = focal_reference(r, target, 2.0, 0.25)
    ref = {"none": ref, "mean": ref.sum() / 12, "sum": ref.sum()}[reduction]
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, r.grad)
    assert sigmoid_focal_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2.0, 0.25, None,
                              "sum").item() == 0


def test_multi_scale_deformable_attention_function_matches_pytorch_path():
    from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch

    gen = torch.Generator().manual_seed(4)
    shapes = torch.tensor([[6, 8], [3, 4]])
    start = torch.tensor([0, 48])
    value = torch.randn(2, 60, 2, 4, generator=gen, dtype=torch.float64)
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=gen, dtype=torch.float64)
    attn = torch.rand(2, 5, 2, 2, 3, generator=gen, dtype=torch.float64)
    a = leaves(value, loc, attn)
    out = MultiScaleDeformableAttnFunction.apply(a[0], shapes, start, a[1], a[2], 64)
    r = leaves(value, loc, attn)
    ref = multi_scale_deformable_attn_pytorch(r[0], shapes, r[1], r[2])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for mine, theirs in zip(a, r):
        torch.testing.assert_close(mine.grad, theirs.grad)


# ---- what is not provided ---------------------------------------------------------------------------


def test_op_not_provided_names_it():
    from mmcv.ops import nms_rotated

    with pytest.raises(OpNotAvailableError, match="'nms_rotated'.*FPN_LAB_MMCV=compiled"):
        nms_rotated(torch.rand(3, 5), torch.rand(3), 0.5)


def test_model_with_unprovided_layer_refused_naming_preset_and_layer():
    from mmcv.ops import CARAFEPack

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), CARAFEPack(4, 2))
    with pytest.raises(OpNotAvailableError, match=r"preset 'my_preset'.*1 \(CARAFEPack\)"):
        check_model(model, "my_preset")
    check_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), "plain")  # nothing of mmcv: accepted
    from mmcv.ops.merge_cells import SumCell

    check_model(torch.nn.Sequential(SumCell(4, 4)), "nas-fpn cells")  # mmcv layers written in PyTorch: accepted


def test_unknown_env_value_refused(monkeypatch):
    import sys

    monkeypatch.setenv("FPN_LAB_MMCV", "fast")
    monkeypatch.delitem(sys.modules, "mmcv._ext")  # restored after the test
    with pytest.raises(ModelError, match="FPN_LAB_MMCV='fast'"):
        mmcv_ext.install()


def test_import_machinery_sees_the_stand_in_as_a_module_without_compiled_layers():
    """mmengine's Runner asks pkgutil.find_loader('mmcv._ext') (mmcv_full_available); a module
    without a spec made that raise, so mmdet's own trainer could not start."""
    import importlib.util

    from mmengine.utils.dl_utils import mmcv_full_available

    assert importlib.util.find_spec("mmcv._ext") is not None
    assert mmcv_full_available() is False  # mmcv's other compiled layers (SyncBatchNorm...) are not there


def test_deform_conv_of_an_empty_batch_is_empty():
    """The finiteness check stacked nothing for an empty batch (mmcv's own wrappers refuse one, the
    export's layer and direct callers do not)."""
    from fpn_lab.mmdet_adapter.mmcv_ops import deform_conv2d

    out = deform_conv2d(torch.zeros(0, 4, 6, 6), torch.zeros(0, 18, 6, 6), torch.randn(4, 4, 3, 3), padding=(1, 1))
    assert out.shape == (0, 4, 6, 6)
