"""The preset registry and the presets' provenance against the installed mmdet configs and metafiles."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fpn_lab.errors import ModelError
from fpn_lab.models import presets, registry
from fpn_lab.models.registry import archs, get_preset, icevision_backbones, list_models, register_model, selections

ALL = list_models()


def test_icevision_selection_indices():
    assert selections() == {0: "vfnet_r50_fpn_ms2x", 1: "retinanet_r50_fpn_1x", 2: "faster_rcnn_r101_fpn_2x",
                            4: "yolox_s_pafpn_300e"}
    assert get_preset("4").name == get_preset(4).name == "yolox_s_pafpn_300e"


def test_unknown_index_and_name_are_clear_errors():
    with pytest.raises(ModelError, match=r"Valid indices: 0 = vfnet_r50_fpn_ms2x"):
        get_preset(12)
    with pytest.raises(ModelError, match=r"Did you mean 'retinanet_r50_fpn_1x'"):
        get_preset("retinanet_r50_fpn_1")
    with pytest.raises(ModelError, match="boolean"):
        get_preset(True)


def test_duplicate_registration_is_refused():
    with pytest.raises(ModelError, match="already registered"):
        register_model(get_preset("yolox_tiny_pafpn_300e"))
    tiny = get_preset("yolox_tiny_pafpn_300e")
    with pytest.raises(ModelError, match="'yolox.yolox_tiny_8x8' is already registered"):
        register_model(dataclasses.replace(tiny, name="yolox_tiny2_pafpn_300e"))
    with pytest.raises(ModelError, match="selection index 4 is already taken"):
        register_model(dataclasses.replace(tiny, name="yolox_tiny2_pafpn_300e", aliases=(), selection=4))
    assert "yolox_tiny2_pafpn_300e" not in list_models()  # a refused preset leaves nothing behind


def test_a_duplicate_in_the_catalogue_fails_the_first_lookup(monkeypatch):
    tiny = get_preset("yolox_tiny_pafpn_300e")
    for table in ("_PRESETS", "_ALIASES", "_SELECTIONS"):
        monkeypatch.setattr(registry, table, {})
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(presets, "PRESETS", (tiny, dataclasses.replace(tiny, aliases=())))
    with pytest.raises(ModelError, match="'yolox_tiny_pafpn_300e' is already registered"):
        list_models()
    assert registry._PRESETS == {} and not registry._loaded  # the next lookup tries again


def test_archs_are_the_registered_families():
    assert archs() == sorted({get_preset(n).arch for n in ALL}) and archs()


@pytest.mark.parametrize("arch", archs())
def test_icevision_backbones_name_every_preset_of_the_arch(arch):
    table = icevision_backbones(arch)
    assert set(table.values()) == {n for n in ALL if get_preset(n).arch == arch}
    for backbone, name in table.items():
        assert f"{arch}.{backbone}" in get_preset(name).aliases and "." not in backbone
        assert get_preset(f"{arch}.{backbone}").name == name


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ModelError, match=r"Did you mean 'retinanet'.*Registered archs: efficientdet, faster_rcnn, fcos"):
        icevision_backbones("retinanett")


def test_selection_table_lists_icevision_presets_first_indexed_by_name():
    from fpn_lab.models.catalogue import selection_table

    df = selection_table()
    first = list(selections().values())
    assert df.index.name == "preset" and "preset" not in df.columns
    assert list(df.index) == first + sorted(set(ALL) - set(first))
    assert list(df["selection"][: len(first)]) == list(selections())
    assert all(s == "" for s in df["selection"][len(first):])
    assert df.loc["yolox_s_pafpn_300e", "COCO box AP (mmdet)"] == get_preset("yolox_s_pafpn_300e").coco_box_ap
    assert all(isinstance(v, float) and (math.isnan(v) or v > 0) for v in df["params (M)"])
    rest = sorted(set(list_models("retinanet*")) - {"retinanet_r50_fpn_1x"})
    assert list(selection_table("retinanet*").index) == ["retinanet_r50_fpn_1x", *rest]


def test_list_models_filters_with_fnmatch():
    assert list_models("retinanet*") and all(n.startswith("retinanet") for n in list_models("retinanet*"))
    assert "yolox_x_pafpn_300e" not in list_models("yolox*", exclude="*_x_*")


@pytest.mark.parametrize("name", ALL)
def test_naming_convention(name):
    p = get_preset(name)
    assert re.fullmatch(r"(vfnet|retinanet|fcos|faster_rcnn|efficientdet|yolox)_[a-z0-9-]+_(fpn|pafpn|bifpn)_[a-z0-9]+",
                        name)
    assert name.split("_")[-2] == p.neck
    assert all(get_preset(a) is p for a in p.aliases)


def _metafile(arch):
    from fpn_lab.mmdet_adapter.config import configs_root

    return yaml.safe_load((configs_root() / arch / "metafile.yml").read_text())["Models"]


@pytest.mark.parametrize("name", ALL)
def test_provenance_matches_mmdet_metafile_and_config(name):
    from mmengine.config import Config

    from fpn_lab.mmdet_adapter.config import OWN_PREFIX, config_path
    from fpn_lab.mmdet_adapter.necks import level_names, neck_strides

    p = get_preset(name)
    if p.config.startswith(OWN_PREFIX):  # fpn_lab's own config (EfficientDet): no mmdet metafile, no COCO weights
        assert p.arch == "efficientdet" and p.weights_url == "" and p.coco_box_ap == 34.6  # the paper's Table 2, D0
    else:
        entry = next(m for m in _metafile(p.arch) if Path(m["Config"]).name == Path(p.config).name)
        assert entry["Weights"] == p.weights_url
        ap = next(r["Metrics"]["box AP"] for r in entry["Results"] if r["Task"] == "Object Detection")
        assert float(ap) == p.coco_box_ap
    cfg = Config.fromfile(str(config_path(p)))
    pre = cfg.model.data_preprocessor
    assert (tuple(pre.get("mean")) if pre.get("mean") else None) == p.mean
    assert (tuple(pre.get("std")) if pre.get("std") else None) == p.std
    assert p.bgr == (not pre.get("bgr_to_rgb", False))
    neck = cfg.model.neck.type
    assert {"FPN": "fpn", "YOLOXPAFPN": "pafpn", "fpn_lab.BiFPN": "bifpn"}[neck] == p.neck
    num_outs = cfg.model.neck.get("num_outs", len(cfg.model.neck.in_channels))
    assert len(p.levels) == num_outs
    # the levels the built model reports (from its backbone's and neck's strides: ResNet, ResNeXt, CSPDarknet,
    # EfficientNet)
    assert level_names(neck_strides(cfg)) == p.levels


def test_importing_fpn_lab_does_not_import_mmdet():
    code = ("import sys, fpn_lab, fpn_lab.models.registry, fpn_lab.models.catalogue, fpn_lab.data.parsers, fpn_lab.cli;"
            "bad = [m for m in ('mmdet', 'mmengine', 'mmcv') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_only_the_adapter_imports_mmdet_and_mmengine():
    root = Path(__file__).resolve().parents[1] / "fpn_lab"
    offenders = []
    for f in root.rglob("*.py"):
        if "mmdet_adapter" in f.parts:
            continue
        if re.search(r"^\s*(from|import)\s+(mmdet|mmengine|mmcv)\b", f.read_text(), re.M):
            offenders.append(str(f.relative_to(root)))
    assert offenders == []


def test_first_lookups_from_many_threads_fill_the_registry_once():
    """``fpn-lab batch`` checks several params files in threads: the lazy fill must not race
    ("model name ... is already registered", or an empty registry seen half-way)."""
    import subprocess
    import sys

    code = """
import sys, threading
sys.setswitchinterval(1e-6)  # switch threads as often as possible
from fpn_lab.models import registry
errors, barrier = [], threading.Barrier(8)
def look():
    barrier.wait()
    try:
        registry.get_preset("yolox_tiny_pafpn_300e")
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=look) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print(errors or "ok")
"""
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "ok", out.stdout + out.stderr
