"""Every preset builds from scratch, takes a training step with finite losses and predicts."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from conftest import ROOT
from fpn_lab.data.dataloaders import Dataset, collate
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.errors import WeightsUnavailableError
from fpn_lab.models.build import build_model
from fpn_lab.mmdet_adapter.wrapper import _frozen_norm_train_mode
from fpn_lab.models.registry import get_preset, list_models

# every preset, the ResNet-101, ResNeXt and YOLOX-L/X ones included: at 64 px the 14 largest take
# 32 s together on this project's 2-core CPU (bench/logs/presets_slow_lite.log)
PARAMS = list_models()


def _batch(records, size=64, pad=(114, 114, 114)):
    ds = Dataset(records, resize_and_pad(size, pad))
    return collate([ds[i] for i in range(len(ds))])


def _step(model, images, targets):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    out = model(images, targets)
    out["loss"].backward()
    opt.step()
    return out


@pytest.mark.parametrize("name", PARAMS)
def test_preset_builds_steps_and_predicts(name, bccd_records, no_network):
    _, train, _ = bccd_records
    preset = get_preset(name)
    model = build_model(name, num_classes=3, pretrained=False)
    images, targets = _batch(train[:2], pad=preset.pad_value)
    out = _step(model, images, targets)
    losses = {k: float(v) for k, v in out.items() if k.startswith("loss")}
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses.values()), losses
    model.eval()
    preds = model.predict(images, [t["geometry"] for t in targets])
    assert len(preds) == 2 and all(p["boxes"].shape[1] == 4 for p in preds)
    torch.manual_seed(0)  # two-stage heads sample proposals at random: the same draws for both losses
    val = model(images, targets)  # validation: losses without touching BatchNorm statistics
    assert math.isfinite(float(val["loss"])) and len(val["predictions"]) == 2
    for a, b in zip(val["predictions"], preds):  # the shared backbone pass predicts exactly what predict() does
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    # and its loss is the detector's own loss with every norm layer in eval mode
    _frozen_norm_train_mode(model.detector)
    torch.manual_seed(0)
    with torch.no_grad():
        ref = model._loss(images, targets, training=False)
    model.eval()
    torch.testing.assert_close(val["loss"], ref["loss"])


@pytest.mark.parametrize("selection", [0, 1, 4, "retinanet_r50-caffe_fpn_1x"])  # caffe configs freeze BN affine
def test_icevision_selections_train_from_scratch_without_frozen_stages(selection):
    model = build_model(selection, num_classes=3, pretrained=False)
    assert all(p.requires_grad for p in model.parameters())
    backbone = model.cfg.model.backbone
    assert "init_cfg" not in backbone and backbone.get("frozen_stages", -1) == -1
    assert backbone.get("norm_eval", False) is False


def test_validation_loss_leaves_batchnorm_statistics_alone(bccd_records):
    _, train, _ = bccd_records
    model = build_model("retinanet_r18_fpn_1x", num_classes=3)
    images, targets = _batch(train[:2])
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.eval()
    model(images, targets)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.detector.training


def test_a_batch_of_only_negative_images_trains(bccd_records):
    from fpn_lab.core.records import Record

    _, train, _ = bccd_records
    negatives = [Record(r.record_id, r.filepath, r.height, r.width) for r in train[:2]]
    for name in ("vfnet_r50_fpn_1x", "retinanet_r18_fpn_1x", "yolox_tiny_pafpn_300e"):
        out = _step(build_model(name, num_classes=3), *_batch(negatives))
        assert math.isfinite(float(out["loss"])), name


def test_pretrained_offline_fails_at_once_naming_url_and_path(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("FPN_LAB_WEIGHTS", str(tmp_path))
    preset = get_preset("yolox_tiny_pafpn_300e")
    with pytest.raises(WeightsUnavailableError) as e:
        build_model(preset.name, num_classes=3, pretrained=True)
    assert preset.weights_url in str(e.value) and str(tmp_path / preset.weights_filename) in str(e.value)


def test_coco_weights_from_a_local_file_skip_class_layers(tmp_path):
    src = build_model("yolox_tiny_pafpn_300e", num_classes=80)
    path = tmp_path / "coco_like.pth"
    torch.save({"state_dict": src.detector.state_dict(), "meta": {"dtype": np.dtype("float32")}}, path)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3, weights=path)
    assert model.skipped_weights and all("conv_cls" in k for k in model.skipped_weights)
    name = "backbone.stem.conv.conv.weight"
    assert torch.equal(model.detector.state_dict()[name], src.detector.state_dict()[name])


def test_channels_last_placement_computes_the_same_losses_and_outputs(bccd_records):
    from fpn_lab.models.build import place_model

    _, train, _ = bccd_records
    torch.manual_seed(0)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3)
    images, targets = _batch(train[:2], pad=get_preset("yolox_tiny_pafpn_300e").pad_value)
    model.eval()
    with torch.no_grad():
        nchw = model(images, targets)
    place_model(model, "cpu", channels_last=True)
    conv = model.detector.backbone.stem.conv.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    with torch.no_grad():
        nhwc = model(images, targets)
        feats = model.detector.extract_feat(model.preprocess(images, targets, training=False)[0])
    assert model.preprocess(images, targets, training=False)[0].is_contiguous(memory_format=torch.channels_last)
    assert feats[0].is_contiguous(memory_format=torch.channels_last)  # the layout propagates through the network
    torch.testing.assert_close(nhwc["loss"], nchw["loss"], rtol=1e-4, atol=1e-4)
    place_model(model, "cpu", channels_last=False)
    assert model.detector.backbone.stem.conv.conv.weight.is_contiguous()
    assert model.preprocess(images, targets, training=False)[0].is_contiguous()


def test_channels_last_keeps_mmcv_deformable_convolutions_working(bccd_records):
    """mmcv's CPU DeformConv refuses non-contiguous (NHWC) inputs and weights ("input must be
    contiguous"): VFNet's head uses it, so a channels-last VFNet must still train and predict alike."""
    from fpn_lab.models.build import place_model

    _, train, _ = bccd_records
    torch.manual_seed(0)
    model = build_model("vfnet_r50_fpn_ms2x", num_classes=3)
    images, targets = _batch(train[:2], size=64, pad=get_preset("vfnet_r50_fpn_ms2x").pad_value)
    model.eval()
    with torch.no_grad():
        nchw = model(images, targets)
    place_model(model, "cpu", channels_last=True)
    with torch.no_grad():
        nhwc = model(images, targets)
    torch.testing.assert_close(nhwc["loss"], nchw["loss"], rtol=1e-4, atol=1e-4)
    model.train()
    model(images, targets)["loss"].backward()  # the training step works too


def test_nan_offsets_in_vfnet_end_lr_find_instead_of_crashing_the_process(tmp_path):
    """mmcv's CPU DeformConv indexes outside the feature map on NaN offsets and kills the process
    (segmentation fault) when lr_find drives VFNet's weights to NaN. Run in a child process, so a
    crash fails this test instead of killing pytest: lr_find must end normally with a suggestion."""
    import subprocess
    import sys

    code = """
import torch
from fpn_lab.all import *
set_seed(0)
parser = parsers.VOCBBoxParser(annotations_dir="data/fridge/annotations", images_dir="data/fridge/images")
tr, va = parser.parse()
mt = models.mmdet.vfnet
model = mt.model(backbone=mt.backbones.resnet50_fpn_mstrain_2x(pretrained=False), num_classes=4)
t, v = tfms.A.Adapter([*tfms.A.aug_tfms(size=64)]), tfms.A.Adapter([*tfms.A.resize_and_pad(64)])
learn = mt.fastai.learner(dls=[mt.train_dl(Dataset(tr, t), batch_size=2), mt.valid_dl(Dataset(va, v), batch_size=2)],
                          model=model, metrics=[COCOMetric()], path="TMP")
print("suggestion", learn.lr_find(num_it=40, show_plot=False).valley)
""".replace("TMP", str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0 and "suggestion" in out.stdout, (out.returncode, out.stderr[-2000:])
