"""The preset catalogue is plain frozen data."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from fpn_lab.models.presets import PRESETS, Preset


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


def test_caffe_presets_take_bgr_with_caffe_mean_and_pad_with_the_rgb_mean():
    caffe = [p for p in PRESETS if "-caffe" in p.name]
    assert caffe
    for p in caffe:
        assert p.bgr and p.std == (1.0, 1.0, 1.0)
        assert p.mean[::-1] == p.pad_value  # the mean, in RGB order: 0 after normalisation
