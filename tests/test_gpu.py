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
