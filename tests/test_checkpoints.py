"""Starting from a checkpoint: fpn_lab, mmdet, mmengine Runner and plain state dicts load (or fail loudly),
counts are exact, and a model built from a checkpoint predicts what the saved model predicted."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import DATA, perturbed
from fpn_lab.checkpoint import check_reload, load_checkpoint, save_checkpoint
from fpn_lab.core.class_map import ClassMap
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.errors import ModelError
from fpn_lab.models.build import build_model

PRESET = "yolox_tiny_pafpn_300e"


@pytest.fixture(scope="module")
def fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    return parser.class_map, [r.filepath for r in records[:3]]


@pytest.fixture(scope="module")
def trained(fridge):
    """A model with non-initial weights (every tensor perturbed), so a failed load cannot pass."""
    class_map, _ = fridge
    return perturbed(build_model(PRESET, num_classes=len(class_map)))


def _mmengine_runner_checkpoint(model, tmp_path):
    """An ``epoch_1.pth`` as mmengine's ``Runner.save_checkpoint`` writes it: ``meta``, ``state_dict``
    and the message hub's state (HistoryBuffers, pickled with ``getattr``), saved by mmengine's
    own ``save_checkpoint``."""
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint as mmengine_save, weights_to_cpu

    hub = MessageHub.get_instance("fpn_lab-test-runner")
    hub.update_scalar("train/loss", 1.5)
    hub.update_scalar("train/lr", 0.01)
    path = tmp_path / "epoch_1.pth"
    mmengine_save({"meta": {"epoch": 1, "iter": 10, "seed": 0, "mmengine_version": "0.10.7"},
                   "state_dict": weights_to_cpu(get_state_dict(model.detector)), "message_hub": hub.state_dict()},
                  str(path))
    return path


def test_model_built_from_an_fpn_lab_checkpoint_predicts_the_same_boxes(fridge, trained, tmp_path):
    class_map, images = fridge
    path = save_checkpoint(tmp_path / "model.pth", trained, class_map, image_size=64)
    model = build_model(PRESET, num_classes=len(class_map), weights=path, class_names=class_map.names)
    report = model.weights_report
    assert len(report.loaded) == report.model_tensors and not model.skipped_weights, str(report)
    assert check_reload(trained, model, images, image_size=64) > 0  # raises when any box differs


@pytest.mark.parametrize("layout", ["mmdet", "mmdet-ddp", "plain-detector", "plain-wrapper", "mmengine-runner"])
def test_every_checkpoint_layout_loads_every_tensor(fridge, trained, tmp_path, layout):
    class_map, images = fridge
    det = trained.detector.state_dict()
    path = tmp_path / "w.pth"
    if layout == "mmdet":
        torch.save({"meta": {"dtype": np.dtype("float32"), "epoch": 12}, "state_dict": det}, path)
    elif layout == "mmdet-ddp":
        torch.save({"meta": {}, "state_dict": {f"module.{k}": v for k, v in det.items()}}, path)
    elif layout == "plain-detector":
        torch.save(det, path)
    elif layout == "plain-wrapper":
        torch.save(trained.state_dict(), path)  # keys detector.*
    else:
        path = _mmengine_runner_checkpoint(trained, tmp_path)
        assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    model = build_model(PRESET, num_classes=len(class_map), weights=path)
    assert len(model.weights_report.loaded) == len(det) == model.weights_report.model_tensors
    assert check_reload(trained, model, images, image_size=64) > 0


def test_counts_are_exact_when_class_layers_differ(tmp_path):
    src = build_model(PRESET, num_classes=80)
    path = tmp_path / "coco_like.pth"
    torch.save({"state_dict": src.detector.state_dict()}, path)
    model = build_model(PRESET, num_classes=3, weights=path)
    r = model.weights_report
    mismatched = [n for n, _, _ in r.shape_mismatch]
    assert mismatched == model.skipped_weights and len(mismatched) == 6  # weight + bias of 3 levels
    assert all("multi_level_conv_cls" in n for n in mismatched)
    assert len(r.loaded) + len(mismatched) == r.model_tensors and not r.not_in_model and not r.not_in_checkpoint
    assert f"loaded {r.model_tensors - 6} of the model's {r.model_tensors} tensors" in str(r)


def test_a_checkpoint_of_another_architecture_is_an_error(tmp_path):
    other = build_model("retinanet_r18_fpn_1x", num_classes=3)
    path = tmp_path / "retina.pth"
    torch.save({"state_dict": other.detector.state_dict()}, path)
    with pytest.raises(ModelError, match=r"loaded \d+ of the model's \d+ tensors.*Fewer than 50%"):
        build_model(PRESET, num_classes=3, weights=path)


def test_a_file_that_is_not_a_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="not a readable torch checkpoint"):
        build_model(PRESET, num_classes=3, weights=path)
    for content in (b"", bytes(range(256)) * 4, b"version https://git-lfs.github.com/spec/v1\n"):
        path.write_bytes(content)
        with pytest.raises(ModelError, match="not a readable torch checkpoint"):
            build_model(PRESET, num_classes=3, weights=path)
    torch.save({"epoch": 3, "notes": "no weights"}, path)
    with pytest.raises(ModelError, match=r"no state dict of tensors found \(top level: \['epoch', 'notes'\]"):
        build_model(PRESET, num_classes=3, weights=path)


def test_fine_tune_from_a_checkpoint_with_other_classes(fridge, trained, tmp_path, caplog):
    class_map, _ = fridge
    path = save_checkpoint(tmp_path / "model.pth", trained, class_map, image_size=64)
    reordered = list(reversed(class_map.names))
    with pytest.raises(ModelError, match="same classes in another order"):
        build_model(PRESET, num_classes=len(class_map), weights=path, class_names=reordered)
    others = ["a", "b", "c", "d"]  # same count, other classes: the head's class rows must not carry over
    with caplog.at_level(logging.WARNING, logger="fpn_lab.models"):
        model = build_model(PRESET, num_classes=4, weights=path, class_names=others)
    assert "re-initialising the class-dependent layers" in caplog.text
    assert sorted(model.weights_report.reinitialised) == sorted(model.skipped_weights)
    assert all("multi_level_conv_cls" in n for n in model.skipped_weights) and len(model.skipped_weights) == 6
    name = "bbox_head.multi_level_conv_cls.0.weight"
    assert not torch.equal(model.detector.state_dict()[name], trained.detector.state_dict()[name])
    extra = build_model(PRESET, num_classes=5, weights=path, class_names=[*class_map.names, "bird"])
    assert len(extra.skipped_weights) == 6


def test_load_checkpoint_rebuilds_from_the_saved_config_and_returns_the_letterbox(fridge, trained, tmp_path, caplog):
    class_map, images = fridge
    path = save_checkpoint(tmp_path / "m.pth", trained, class_map, image_size=64, pad_position="center")
    ckpt = torch.load(path)
    ckpt["config"]["model"]["bbox_head"]["feat_channels"] = 80  # as if saved under another mmdet version
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, path)
    with pytest.raises(ModelError, match="do not fit its own config"), caplog.at_level(logging.WARNING):
        load_checkpoint(path)
    assert "differs from the one saved with the checkpoint" in caplog.text and "feat_channels" in caplog.text
    path = save_checkpoint(tmp_path / "m.pth", trained, class_map, image_size=64, pad_position="center")
    model, info = load_checkpoint(path, class_map=class_map)
    assert (info["image_size"], info["pad_position"], info["pad_value"]) == (64, "center", [114.0] * 3)
    assert check_reload(trained, model, images, image_size=64) > 0
    with pytest.raises(ModelError, match=r"same names in another order"):
        load_checkpoint(path, class_map=ClassMap(list(reversed(class_map.names))))
    with pytest.raises(ModelError, match=r"trained with classes \[.*\] but \[.*'bird'\] were expected"):
        load_checkpoint(path, class_map=[*class_map.names, "bird"])


def test_load_checkpoint_has_no_remap_argument(fridge, trained, tmp_path):
    class_map, _ = fridge
    path = save_checkpoint(tmp_path / "m.pth", trained, class_map, image_size=64)
    with pytest.raises(TypeError):
        load_checkpoint(path, class_map=class_map, remap={"milk_bottle": "carton"})


def test_r18_class_maps_at_save_reordered_and_extra(trained, tmp_path, caplog):
    """The case's maps are mmdet 2 style with "background" at index 0; fpn_lab's class maps have no
    background class, so it is dropped before use."""
    import json

    from conftest import CASES

    def names(file):
        return [n for n in json.loads((CASES / "R18" / file).read_text())["classes"] if n != "background"]

    at_save, reordered, extra = names("class_map_at_save.json"), names("class_map_reordered.json"), names(
        "class_map_extra_class.json")
    model = build_model(PRESET, num_classes=len(at_save))
    model.load_state_dict({k: v for k, v in trained.state_dict().items() if "conv_cls" not in k}, strict=False)
    path = save_checkpoint(tmp_path / "m.pth", model, ClassMap(at_save), image_size=64)
    assert torch.load(path)["class_names"] == at_save  # the checkpoint stores its class map
    with pytest.raises(ModelError, match=r"\['cat', 'dog'\] but \['dog', 'cat'\] were expected \(the same names"):
        load_checkpoint(path, class_map=reordered)
    with pytest.raises(ModelError, match="same classes in another order"):
        build_model(PRESET, num_classes=2, weights=path, class_names=reordered)
    with pytest.raises(ModelError, match=r"\['cat', 'dog'\] but \['cat', 'dog', 'bird'\] were expected"):
        load_checkpoint(path, class_map=extra)
    with caplog.at_level(logging.WARNING, logger="fpn_lab.models"):  # the one exception: a requested fine-tune
        tuned = build_model(PRESET, num_classes=3, weights=path, class_names=extra)
    assert "multi_level_conv_cls.0.weight" in caplog.text and len(tuned.skipped_weights) == 6


@pytest.mark.parametrize("meta", [{"dataset_meta": {"classes": ("b", "a")}}, {"CLASSES": ("b", "a")}])
def test_class_names_in_mmdet_checkpoints_are_checked_too(trained, tmp_path, meta):
    path = tmp_path / "mmdet.pth"
    torch.save({"meta": meta, "state_dict": build_model(PRESET, num_classes=2).detector.state_dict()}, path)
    with pytest.raises(ModelError, match="same classes in another order"):
        build_model(PRESET, num_classes=2, weights=path, class_names=["a", "b"])
    assert len(build_model(PRESET, num_classes=2, weights=path, class_names=["b", "a"]).skipped_weights) == 0


GN = {"type": "GN", "num_groups": 8, "requires_grad": True}


def test_cfg_options_may_add_a_constructor_argument_and_survive_a_reload(fridge, tmp_path, caplog):
    class_map, images = fridge
    torch.manual_seed(0)
    model = build_model("retinanet_r18_fpn_1x", num_classes=len(class_map), neck_args={"out_channels": 32},
                        cfg_options={"model.bbox_head.norm_cfg": GN, "model.bbox_head.feat_channels": 32,
                                     "model.neck.norm_cfg": GN, "model.bbox_head.anchor_generator.octave_base_scale": 2})
    norms = [type(m).__name__ for m in model.detector.bbox_head.cls_convs.modules()]
    assert "GroupNorm" in norms and "GroupNorm" in [type(m).__name__ for m in model.detector.neck.modules()]
    assert model.detector.bbox_head.prior_generator.octave_base_scale == 2
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "gn.pth", model.eval(), class_map, image_size=64)
    with caplog.at_level(logging.WARNING):
        again, info = load_checkpoint(path, class_map=class_map)
    assert "differs from the one saved" not in caplog.text  # the overrides are rebuilt, not reported as drift
    assert info["cfg_options"]["model.bbox_head.norm_cfg"] == GN and again.cfg_options == info["cfg_options"]
    assert check_reload(model, again, images, image_size=64) > 0  # raises when the boxes differ


@pytest.mark.parametrize(("key", "named"), [("model.bbox_head.norm_cgf", "norm_cfg"),  # a typo of a constructor arg
                                            ("model.bbox_head.anchor_generator.octave_scale", "octave_base_scale")])
def test_cfg_options_keys_that_no_constructor_takes_are_errors(key, named):
    with pytest.raises(ModelError, match=rf"has no '{key.rsplit('.', 1)[1]}'.*{named}"):
        build_model("retinanet_r18_fpn_1x", num_classes=3, cfg_options={key: 1})


def test_weights_that_leave_more_than_the_class_layers_unloaded_are_an_error(trained, tmp_path):
    """A checkpoint filling 60 % of the model was a log warning; training went on from a half-random model."""
    state = trained.detector.state_dict()
    dropped = [k for k in state if k.startswith("neck.")]  # e.g. written with another neck
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": {k: v for k, v in state.items() if k not in dropped}}, path)
    counted = [k for k in dropped if not k.endswith("num_batches_tracked")]  # a step counter changes no prediction
    with pytest.raises(ModelError, match=rf"{len(counted)} of the model's \d+ tensors beyond the class-dependent layers.*"
                                         r"allow_partial=True"):
        build_model(PRESET, num_classes=4, weights=path)
    model = build_model(PRESET, num_classes=4, weights=path, allow_partial=True)
    assert sorted(model.weights_report.not_in_checkpoint) == sorted(dropped)


def test_an_fpn_lab_checkpoint_with_another_neck_is_refused_by_name(fridge, tmp_path):
    class_map, _ = fridge
    torch.manual_seed(0)
    bifpn = build_model(PRESET, num_classes=len(class_map), neck="bifpn", neck_args={"num_repeats": 1})
    path = save_checkpoint(tmp_path / "bifpn.pth", bifpn, class_map, image_size=64)
    with pytest.raises(ModelError, match=r"trained with neck bifpn \{'num_repeats': 1\}, but neck the preset's own "
                                         r"was asked for.*neck='bifpn', neck_args=\{'num_repeats': 1\}"):
        build_model(PRESET, num_classes=len(class_map), weights=path)
    again = build_model(PRESET, num_classes=len(class_map), weights=path, neck="bifpn", neck_args={"num_repeats": 1})
    assert not again.skipped_weights


def test_without_class_names_the_checkpoints_class_order_is_remembered_and_checked(fridge, trained, tmp_path):
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.inference import evaluate

    class_map, _ = fridge
    path = save_checkpoint(tmp_path / "model.pth", trained, class_map, image_size=64)
    model = build_model(PRESET, num_classes=len(class_map), weights=path)
    assert model.class_names == list(class_map.names)
    (records,) = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images").parse(SingleSplitSplitter())
    swapped = ClassMap(list(reversed(class_map.names)))
    with pytest.raises(ModelError, match="its labels would be swapped"):
        evaluate(model, Dataset(records[:1], resize_and_pad(64)), swapped)
    with pytest.raises(ModelError, match="its labels would be swapped"):
        save_checkpoint(tmp_path / "again.pth", model, swapped, image_size=64)
