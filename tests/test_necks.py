"""The neck as a choice: every detector with each neck builds and steps; conflicts are clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fpn_lab.data.dataloaders import Dataset, collate
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.errors import ModelError
from fpn_lab.models.build import build_model

DETECTORS = ["vfnet_r50_fpn_1x", "retinanet_r18_fpn_1x", "fcos_r50-caffe_fpn_1x", "faster_rcnn_r50_fpn_1x",
             "efficientdet_effb0_bifpn_300e", "yolox_tiny_pafpn_300e"]


NECK_CLASSES = {"fpn": "FPN", "pafpn": "PAFPN", "nasfpn": "NASFPN", "bifpn": "BiFPN", "channel_mapper": "ChannelMapper"}
P3_P7 = ("P3", "P4", "P5", "P6", "P7")


@pytest.mark.parametrize("neck", list(NECK_CLASSES))
@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_with_each_neck(name, neck, bccd_records):
    _, train, _ = bccd_records
    model = build_model(name, num_classes=3, neck=neck)
    yolox = name.startswith("yolox")
    expected = NECK_CLASSES[neck]  # "pafpn" is mmdet's PAFPN on YOLOX too (its own YOLOXPAFPN: neck="")
    assert type(model.neck).__name__ == expected
    # YOLOX's head takes the strides it is given: NAS-FPN's five levels, or its own three; the others keep theirs
    # (Faster R-CNN's RPN: P2-P6)
    assert model.levels == (model.preset.levels if not yolox else P3_P7 if neck == "nasfpn" else ("P3", "P4", "P5"))
    images, targets = collate([Dataset(train[:2], resize_and_pad(128))[i] for i in range(2)])
    model.train()
    out = model(images, targets)
    out["loss"].backward()
    assert math.isfinite(float(out["loss"]))
    model.eval()
    with torch.no_grad():
        feats = model.detector.extract_feat(model.preprocess(images, targets, training=False)[0])
        assert [128 // f.shape[-1] for f in feats] == [2 ** int(lv[1:]) for lv in model.levels]
        assert len(model.predict(images, [t["geometry"] for t in targets])) == 2


def test_bifpn_on_yolox_with_five_levels_and_its_arguments(bccd_records):
    _, train, _ = bccd_records
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3, neck="bifpn",
                        neck_args={"num_outs": 5, "num_repeats": 2, "fusion": "softmax", "out_channels": 64})
    assert model.levels == P3_P7 and tuple(model.detector.bbox_head.strides) == (8, 16, 32, 64, 128)
    assert len(model.neck.layers) == 2 and model.cfg.model.bbox_head.in_channels == 64
    images, targets = collate([Dataset(train[:2], resize_and_pad(96))[i] for i in range(2)])
    model.train()
    model(images, targets)["loss"].backward()
    with pytest.raises(ModelError, match="fusion 'max' is not one of"):
        build_model("yolox_tiny_pafpn_300e", num_classes=3, neck="bifpn", neck_args={"fusion": "max"})
    with pytest.raises(ModelError, match="takes .*not \\['add_extra_convs'\\]"):
        build_model("yolox_tiny_pafpn_300e", num_classes=3, neck="bifpn", neck_args={"add_extra_convs": "on_input"})


def test_bifpn_takes_the_necks_norm_cfg_like_mmdets_necks(bccd_records):
    """cfg_options model.neck.norm_cfg (GroupNorm, as the RetinaNet recipe's neck) reaches every
    normalisation of BiFPN; without it BiFPN keeps EfficientDet's BatchNorm (momentum 0.01, eps 1e-3)."""
    _, train, _ = bccd_records
    gn = {"type": "GN", "num_groups": 8, "requires_grad": True}
    model = build_model("retinanet_r18_fpn_1x", num_classes=3, neck="bifpn", neck_args={"out_channels": 64},
                        cfg_options={"model.neck.norm_cfg": gn})
    norms = [m for m in model.neck.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm))]
    assert norms and all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 8 for m in norms)
    images, targets = collate([Dataset(train[:2], resize_and_pad(128))[i] for i in range(2)])
    model.train()
    model(images, targets)["loss"].backward()
    plain = build_model("retinanet_r18_fpn_1x", num_classes=3, neck="bifpn", neck_args={"out_channels": 64})
    bns = [m for m in plain.neck.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == len(norms) and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    for neck in ("bifpn", "fpn"):  # a value the neck refuses: ModelError naming the cfg_options given
        with pytest.raises(ModelError, match="could not be built with cfg_options .*model.neck.norm_cfg.*'GN'"):
            build_model("retinanet_r18_fpn_1x", num_classes=3, neck=neck, cfg_options={"model.neck.norm_cfg": "GN"})


@pytest.mark.parametrize("fusion", ["fast", "softmax", "sum"])
def test_bifpn_fusion_weights_stay_non_negative_and_sum_to_one(fusion):
    """EfficientDet's fast normalised fusion (eq. 3): relu(w) / (sum relu(w) + eps), even after the
    weights are pushed negative by training; softmax likewise; plain sum weighs every input 1."""
    from fpn_lab.mmdet_adapter.bifpn import BiFPN

    torch.manual_seed(0)
    neck = BiFPN([16, 32, 64], out_channels=8, num_outs=5, num_repeats=2, fusion=fusion)
    if fusion != "sum":
        with torch.no_grad():
            for node in (m for m in neck.modules() if hasattr(m, "normalized_weights")):
                node.weight.copy_(torch.randn_like(node.weight) * 3)  # some negative
    nodes = [m for m in neck.modules() if hasattr(m, "normalized_weights")]
    assert len(nodes) == 2 * (4 + 4)  # per layer: 4 top-down and 4 bottom-up nodes for 5 levels
    for node in nodes:
        w = node.normalized_weights()
        assert (w >= 0).all()
        if fusion == "sum":
            assert torch.equal(w, torch.ones_like(w))
        elif fusion == "softmax" or (torch.relu(node.weight).sum() > 0):
            torch.testing.assert_close(w.sum(), torch.tensor(1.0), atol=1e-3, rtol=0)
    x = [torch.randn(2, c, 96 // s, 96 // s) for c, s in ((16, 8), (32, 16), (64, 32))]  # 96 px: not a power of 2
    out = neck(x)
    assert [tuple(o.shape) for o in out] == [(2, 8, 12, 12), (2, 8, 6, 6), (2, 8, 3, 3), (2, 8, 2, 2), (2, 8, 1, 1)]


def test_fpn_arguments_override_and_head_channels_follow():
    model = build_model("retinanet_r18_fpn_1x", num_classes=3, neck_args={"out_channels": 64})
    assert model.neck.fpn_convs[0].conv.out_channels == 64 and model.cfg.model.bbox_head.in_channels == 64


@pytest.mark.parametrize("kwargs, match", [
    ({"neck": "bifpnx"}, "unknown neck 'bifpnx'"),
    ({"neck_args": {"channels": 8}}, "unknown neck argument"),
    ({"neck_args": {"num_outs": 4}}, "num_outs: this neck gives strides"),
    ({"neck_args": {"start_level": 2}}, "start_level: this neck gives strides"),
])
def test_conflicting_neck_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ModelError, match=match):
        build_model("retinanet_r18_fpn_1x", num_classes=3, **kwargs)


def test_yoloxs_own_pafpn_takes_no_fpn_arguments():
    with pytest.raises(ModelError, match="neck is YOLOXPAFPN, which takes none of"):
        build_model("yolox_tiny_pafpn_300e", num_classes=3, neck_args={"num_outs": 3})


def test_only_a_neck_the_head_cannot_use_is_neck_incompatible():
    """compare_necks.ipynb skips a neck on NeckIncompatibleError only; other neck errors stay ModelError."""
    from fpn_lab.errors import NeckIncompatibleError

    assert issubclass(NeckIncompatibleError, ModelError)
    with pytest.raises(NeckIncompatibleError, match="NAS-FPN needs five levels"):
        build_model("yolox_tiny_pafpn_300e", num_classes=3, neck="nasfpn", neck_args={"num_outs": 3})
    for kwargs in ({"neck": "bifpnx"}, {"neck_args": {"num_outs": 4}}, {"neck": "nasfpn", "neck_args": {"num_outs": 4}}):
        with pytest.raises(ModelError) as info:
            build_model("retinanet_r18_fpn_1x", num_classes=3, **kwargs)
        assert not isinstance(info.value, NeckIncompatibleError), (kwargs, info.value)


def test_nas_fpn_refuses_an_input_too_small_to_pool_to_p7(bccd_records):
    """NAS-FPN pools its stride-64 level into P7: below 128 px that used to fail deep in torch
    ("Output size is too small"); now the model and the parameters say what size it needs."""
    from fpn_lab.errors import ParamsError
    from fpn_lab.runner.params import validate_params

    _, train, _ = bccd_records
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3, neck="nasfpn")
    assert model.min_input_side == 128
    images, targets = collate([Dataset(train[:1], resize_and_pad(96, model.preset.pad_value))[0]])
    with pytest.raises(ModelError, match=r"NASFPN needs inputs of at least 128 px per side .*got \(96, 96\)"):
        model(images, targets)
    ds = Dataset(train[:2], resize_and_pad(128, model.preset.pad_value))
    images, targets = collate([ds[0], ds[1]])  # two images: BatchNorm needs more than one value at P7 (1x1)
    assert math.isfinite(float(model(images, targets)["loss"]))
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "getting_started.ipynb"
    with pytest.raises(ParamsError, match="image_size: 96 is too small for neck: nasfpn"):
        validate_params({"neck": "nasfpn", "image_size": 96}, notebook)
    validate_params({"neck": "nasfpn", "image_size": 128}, notebook)
