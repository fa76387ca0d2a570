"""On a CUDA GPU only (marked `gpu`, skipped elsewhere; bench/gpu_check.sh runs them): training steps with and without
mixed precision, mmcv's CUDA operators, and predictions that agree with the CPU's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DATA

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]


def _fridge(size=128):
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import SingleSplitSplitter
    from fpn_lab.data.transforms import resize_and_pad

    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    return parser, Dataset(parser.parse(SingleSplitSplitter())[0][:4], resize_and_pad(size))


@pytest.mark.parametrize("amp", [False, True])
def test_training_steps_on_the_gpu(amp):
    from fastai.callback.core import Callback

    from fpn_lab.data.dataloaders import make_dataloaders
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.models.build import build_model, place_model

    parser, ds = _fridge()
    losses = []

    class Keep(Callback):
        def after_loss(self):
            if self.training:
                losses.append(float(self.learn.loss))

    model = place_model(build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map)), "cuda")
    learn = make_learner(make_dataloaders(ds, ds, 2, device="cuda"), model, parser.class_map, amp=amp, cbs=[Keep()])
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, 1e-3)
    assert next(model.parameters()).is_cuda
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert learn.recorder.values[-1][2] >= 0  # AP column computed


def test_mmcv_cuda_ops_and_vfnet_predicts_like_the_cpu():
    from mmcv.ops import DeformConv2d

    from fpn_lab.inference import predict_dataset
    from fpn_lab.models.build import build_model

    layer = DeformConv2d(4, 4, 3, padding=1)
    x, off = torch.randn(1, 4, 8, 8), torch.randn(1, 18, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer.cuda()(x.cuda(), off.cuda()).cpu(), layer.cpu()(x, off), rtol=1e-4, atol=1e-4)
    parser, ds = _fridge()
    torch.manual_seed(0)
    model = build_model("vfnet_r50_fpn_1x", num_classes=len(parser.class_map)).eval()
    cpu = predict_dataset(model, ds)
    gpu = predict_dataset(model.cuda(), ds)
    for a, b in zip(cpu, gpu):
        n = min(10, len(a["scores"]), len(b["scores"]))
        np.testing.assert_allclose(a["scores"][:n], b["scores"][:n], rtol=1e-3, atol=1e-4)


def test_each_provided_mmcv_operator_gives_the_cpus_result_on_cuda():
    """mmcv's operators on torchvision's CUDA kernels (the default set-up, no nvcc): forward and
    gradients equal to the CPU's, and the sigmoid focal loss that mmdet calls on CUDA only."""
    from mmcv.ops import batched_nms, deform_conv2d, modulated_deform_conv2d, roi_align, sigmoid_focal_loss

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes, scores, idx = torch.cat([xy, xy + 20], 1), torch.rand(300, generator=g), torch.randint(0, 3, (300,), generator=g)
    nms_cfg = dict(type="nms", iou_threshold=0.5)
    assert torch.equal(batched_nms(boxes, scores, idx, nms_cfg)[1], batched_nms(boxes.cuda(), scores.cuda(), idx.cuda(),
                                                                                  nms_cfg)[1].cpu())
    x, off, mask = torch.randn(2, 8, 9, 9, generator=g), torch.randn(2, 18, 9, 9, generator=g), torch.rand(2, 9, 9, 9, generator=g)
    w = torch.randn(8, 8, 3, 3, generator=g)
    feat, rois = torch.randn(2, 8, 20, 20, generator=g), torch.tensor([[0, 1.0, 2.0, 15.0, 12.0], [1, 0.0, 0.0, 30.0, 30.0]])
    logits, target = torch.randn(10, 4, generator=g), torch.tensor([0, 1, 2, 3, 4, 4, 0, 1, 2, 4])
    cases = {"deform": (lambda a, o, k: deform_conv2d(a, o, k, 1, 1), (x, off, w)),
             "modulated": (lambda a, o, m, k: modulated_deform_conv2d(a, o, m, k, None, 1, 1), (x, off, mask, w)),
             "roi_align": (lambda f: roi_align(f, rois.to(f.device), (7, 7), 0.5, 0, "avg", True), (feat,)),
             "focal": (lambda z: sigmoid_focal_loss(z, target.to(z.device), 2.0, 0.25, None, "none"), (logits,))}
    for name, (fn, inputs) in cases.items():
        results = []
        for device in ("cpu", "cuda"):
            leaves = [t.to(device).requires_grad_() for t in inputs]
            out = fn(*leaves)
            out.sum().backward()
            results.append([out.detach().cpu()] + [t.grad.cpu() for t in leaves])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
