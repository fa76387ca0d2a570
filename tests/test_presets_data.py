"""The preset catalogue is plain frozen data, and it covers IceVision's backbone names."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from fpn_lab.models.presets import PRESETS, Preset
from fpn_lab.models.registry import archs, icevision_backbones

#: ``__all__`` of IceVision's ``icevision/models/mmdet/models/<arch>/backbones/resnet_fpn.py``
#: (airctic/icevision, last versions), the names its notebooks use as ``<arch>.backbones.<name>``.
ICEVISION_RESNET_FPN = {
    "vfnet": ["resnet50_fpn_1x", "resnet50_fpn_mstrain_2x", "resnet50_fpn_mdconv_c3_c5_mstrain_2x",
              "resnet101_fpn_1x", "resnet101_fpn_mstrain_2x", "resnet101_fpn_mdconv_c3_c5_mstrain_2x",
              "resnext101_32x4d_fpn_mdconv_c3_c5_mstrain_2x", "resnext101_64x4d_fpn_mdconv_c3_c5_mstrain_2x"],
    "retinanet": ["resnet50_caffe_fpn_1x", "resnet50_fpn_1x", "resnet50_fpn_2x", "resnet101_caffe_fpn_1x",
                  "resnet101_fpn_1x", "resnet101_fpn_2x", "resnext101_32x4d_fpn_1x", "resnext101_32x4d_fpn_2x",
                  "resnext101_64x4d_fpn_1x", "resnext101_64x4d_fpn_2x"],
    "yolox": ["yolox_tiny_8x8", "yolox_s_8x8", "yolox_l_8x8", "yolox_x_8x8"],
}


def test_importing_presets_does_not_import_the_registry():
    code = ("import sys, fpn_lab.models.presets as p; assert isinstance(p.PRESETS, tuple) and p.PRESETS;"
            "print(sorted(m for m in sys.modules if m.startswith('fpn_lab.models.')));"
            "sys.exit('fpn_lab.models.registry' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_presets_are_frozen_and_unique():
    assert all(isinstance(p, Preset) for p in PRESETS)
    keys = [k for p in PRESETS for k in (p.name, *p.aliases)]
    assert len(keys) == len(set(keys))
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS[0].name = "renamed"


@pytest.mark.parametrize("arch", sorted(ICEVISION_RESNET_FPN))
def test_every_icevision_backbone_name_is_a_preset(arch):
    assert arch in archs()
    missing = sorted(set(ICEVISION_RESNET_FPN[arch]) - set(icevision_backbones(arch)))
    assert missing == []


def test_caffe_presets_take_bgr_with_caffe_mean_and_pad_with_the_rgb_mean():
    caffe = [p for p in PRESETS if "-caffe" in p.name]
    assert caffe
    for p in caffe:
        assert p.bgr and p.std == (1.0, 1.0, 1.0)
        assert p.mean[::-1] == p.pad_value  # the mean, in RGB order: 0 after normalisation
