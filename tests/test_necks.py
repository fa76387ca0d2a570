"""The neck as a choice: every detector with each neck builds and steps; conflicts are clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from fpn_lab.data.dataloaders import Dataset, collate
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.errors import ModelError
from fpn_lab.models.build import build_model

DETECTORS = ["vfnet_r50_fpn_1x", "retinanet_r18_fpn_1x", "yolox_tiny_pafpn_300e"]


@pytest.mark.parametrize("neck", ["fpn", "pafpn", "nasfpn"])
@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_with_each_neck(name, neck, bccd_records):
    if neck == "nasfpn" and name.startswith("yolox"):
        with pytest.raises(ModelError, match="NAS-FPN needs five levels P3-P7.*uses 3 \\(P3, P4, P5\\)"):
            build_model(name, num_classes=3, neck=neck)
        return
    _, train, _ = bccd_records
    model = build_model(name, num_classes=3, neck=neck)
    expected = {"fpn": "FPN", "pafpn": "YOLOXPAFPN" if name.startswith("yolox") else "PAFPN", "nasfpn": "NASFPN"}[neck]
    assert type(model.neck).__name__ == expected
    assert model.levels == (("P3", "P4", "P5") if name.startswith("yolox") else ("P3", "P4", "P5", "P6", "P7"))
    images, targets = collate([Dataset(train[:2], resize_and_pad(128))[i] for i in range(2)])
    model.train()
    out = model(images, targets)
    out["loss"].backward()
    assert math.isfinite(float(out["loss"]))
    model.eval()
    with torch.no_grad():
        assert len(model.predict(images, [t["geometry"] for t in targets])) == 2


def test_fpn_arguments_override_and_head_channels_follow():
    model = build_model("retinanet_r18_fpn_1x", num_classes=3, neck_args={"out_channels": 64})
    assert model.neck.fpn_convs[0].conv.out_channels == 64 and model.cfg.model.bbox_head.in_channels == 64


@pytest.mark.parametrize("kwargs, match", [
    ({"neck": "bifpn"}, "unknown neck 'bifpn'"),
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
        build_model("yolox_tiny_pafpn_300e", num_classes=3, neck="nasfpn")
    for kwargs in ({"neck": "bifpn"}, {"neck_args": {"num_outs": 4}}, {"neck": "nasfpn", "neck_args": {"num_outs": 4}}):
        with pytest.raises(ModelError) as info:
            build_model("retinanet_r18_fpn_1x", num_classes=3, **kwargs)
        assert not isinstance(info.value, NeckIncompatibleError), (kwargs, info.value)
