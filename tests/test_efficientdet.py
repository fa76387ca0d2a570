"""EfficientDet-D0: fpn_lab's head and config on mmdet's EfficientNet-B0 and fpn_lab's BiFPN, against the paper."""

from __future__ import annotations

import math

import pytest
import torch

from fpn_lab.errors import WeightsUnavailableError
from fpn_lab.mmdet_adapter.complexity import count_flops
from fpn_lab.models.build import build_model

PRESET = "efficientdet_effb0_bifpn_300e"


@pytest.fixture(scope="module")
def d0():
    return build_model(PRESET, num_classes=80).eval()


def test_parameters_and_flops_match_the_paper(d0):
    """Tan et al. 2020, Table 2: EfficientDet-D0 has 3.9 M parameters and 2.5 B FLOPs at 512 px (multiply-adds,
    as mmengine's counter counts them). Its head predicts COCO's 90 ids, ours 80: 5,850 fewer parameters."""
    params = sum(p.numel() for p in d0.parameters())
    assert params == pytest.approx(3.9e6, rel=0.03)
    assert sum(p.numel() for p in d0.backbone.parameters()) == pytest.approx(3.6e6, rel=0.01)  # EfficientNet-B0 body
    flops = count_flops(d0, 512)
    assert flops["flops"] == pytest.approx(2.5e9, rel=0.03)


def test_the_head_is_the_papers(d0):
    head = d0.head
    assert type(head).__name__ == "EfficientDetHead" and type(d0.neck).__name__ == "BiFPN"
    assert len(head.cls_convs) == len(head.reg_convs) == 3 and head.feat_channels == 64  # D0: depth 3, width 64
    assert head.num_base_priors == 9  # 3 scales x 3 ratios
    # the convolutions are shared by all levels, each level has its own BatchNorm
    assert len(head.cls_norms) == len(head.reg_norms) == 5
    assert len({id(n) for level in head.cls_norms for n in level}) == 15
    norm = head.cls_norms[0][0]
    assert isinstance(norm, torch.nn.BatchNorm2d) and norm.momentum == 0.01 and norm.eps == 1e-3
    assert float(torch.sigmoid(head.efficientdet_cls.pointwise.bias).mean()) == pytest.approx(0.01, rel=1e-4)
    assert type(head.loss_cls).__name__ == "FocalLoss" and (head.loss_cls.gamma, head.loss_cls.alpha) == (1.5, 0.25)
    assert isinstance(head.act, torch.nn.SiLU)


def test_shapes_per_level(d0):
    feats = tuple(torch.zeros(2, 64, 64 // 2 ** i, 64 // 2 ** i) for i in range(5))
    with torch.no_grad():
        cls, reg = d0.head(feats)
    assert [tuple(c.shape) for c in cls] == [(2, 9 * 80, 64 // 2 ** i, 64 // 2 ** i) for i in range(5)]
    assert [tuple(r.shape) for r in reg] == [(2, 9 * 4, 64 // 2 ** i, 64 // 2 ** i) for i in range(5)]
    with pytest.raises(ValueError, match="BatchNorm layers for 5 levels; got 3"):
        d0.head(feats[:3])


def test_no_coco_weights_is_a_clear_error():
    with pytest.raises(WeightsUnavailableError, match="no published COCO checkpoint.*pretrained=False"):
        build_model(PRESET, num_classes=3, pretrained=True)


def test_trains_from_scratch_with_nothing_frozen(bccd_records):
    from fpn_lab.data.dataloaders import Dataset, collate
    from fpn_lab.data.transforms import resize_and_pad

    model = build_model(PRESET, num_classes=3)
    assert all(p.requires_grad for p in model.parameters()) and model.cfg.model.backbone.frozen_stages == 0
    _, train, _ = bccd_records
    ds = Dataset(train[:2], resize_and_pad(128))
    images, targets = collate([ds[0], ds[1]])
    model.train()
    out = model(images, targets)
    assert set(out) == {"loss", "loss_cls", "loss_bbox"} and math.isfinite(float(out["loss"]))
    out["loss"].backward()
    stem = model.backbone.layers[0].conv
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0  # the backbone learns too
