"""Params files and their validation against a notebook's parameters (../shared/cases R20, R22)."""

from __future__ import annotations

import re

import pytest

from conftest import CASES, ROOT
from fpn_lab.errors import ParamsError
from fpn_lab.runner.params import coerce, load_params_file, notebook_parameters, parse_set, validate_params

NB = ROOT / "notebooks" / "getting_started.ipynb"
ECHO = CASES / "R22" / "echo_params.ipynb"


@pytest.mark.parametrize("name", ["params_empty.yaml", "params_comments_only.yaml"])
def test_r20_empty_or_comment_only_params_mean_no_overrides(name):
    assert load_params_file(CASES / "R20" / name) == {}


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("3\n", "int"), ("just text\n", "str")])
def test_params_file_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=rf"{path.name}.*mapping.*{kind}"):
        load_params_file(path)


def test_r22_yaml_type_traps():
    raw = load_params_file(CASES / "R22" / "params.yaml")
    spec = notebook_parameters(ECHO)
    value, note = coerce("lr", raw["lr"], spec["lr"]["default"])
    assert value == pytest.approx(1e-3) and isinstance(value, float) and "converted" in note
    assert coerce("lr_ok", raw["lr_ok"], spec["lr_ok"]["default"]) == (1e-3, None)
    assert coerce("img_size", raw["img_size"], spec["img_size"]["default"]) == ([384, 384], None)
    assert coerce("checkpoint", raw["checkpoint"], spec["checkpoint"]["default"]) == (None, None)
    assert coerce("freeze", raw["freeze"], spec["freeze"]["default"]) == (False, None)
    assert coerce("class_names", raw["class_names"], spec["class_names"]["default"])[0] == ["cat", "no", "on"]
    with pytest.raises(ParamsError, match="write null"):
        coerce("resume", raw["resume"], spec["resume"]["default"])
    with pytest.raises(ParamsError, match=r"unquoted_classes\[1\] is a boolean.*quote it"):
        coerce("unquoted_classes", raw["unquoted_classes"], spec["unquoted_classes"]["default"])


def test_unknown_key_suggests_the_close_parameter():
    with pytest.raises(ParamsError, match=r"unknown parameter 'epoch'.*Did you mean 'epochs'"):
        validate_params({"epoch": 3}, NB)


def test_wrong_types_are_caught_before_any_kernel_starts():
    with pytest.raises(ParamsError, match="image_size: expected int"):
        validate_params({"image_size": [320, 320]}, NB)
    with pytest.raises(ParamsError, match="data_dir: expected str, got the boolean"):
        validate_params({"data_dir": False}, NB)
    params, notes = validate_params({"selection": 4, "lr": "3e-3", "epochs": 2.0}, NB)
    assert params == {"selection": 4, "lr": 0.003, "epochs": 2} and len(notes) == 1


def test_notebook_without_parameters_cell_is_an_error(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(ParamsError, match="no cell tagged 'parameters'"):
        notebook_parameters(path)


def test_set_values_are_read_as_yaml_scalars():
    assert parse_set(["epochs=3", "lr=0.001", "selection=retinanet_r18_fpn_1x"]) == {
        "epochs": 3, "lr": 0.001, "selection": "retinanet_r18_fpn_1x"}
    with pytest.raises(ParamsError, match="key=value"):
        parse_set(["epochs"])


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_params_files_validate(path):
    notebook = ROOT / "notebooks" / ("compare_necks.ipynb" if path.stem == "compare_necks" else "getting_started.ipynb")
    params, notes = validate_params(load_params_file(path), notebook)
    assert params and notes == []


def test_missing_data_dir_fails_before_any_kernel():
    with pytest.raises(ParamsError, match="data_dir: 'data/nope' is not a folder"):
        validate_params({"data_dir": "data/nope"}, NB)


@pytest.mark.parametrize("params, match", [({"selection": 3}, "SSD300"), ({"selection": "retinanet_r5"}, "Did you mean"),
                                           ({"image_size": 300}, "multiple of 32")])
def test_bad_values_fail_before_any_kernel(params, match):
    with pytest.raises(ParamsError, match=match):
        validate_params(params, NB)


@pytest.mark.parametrize("params, match", [
    ({"epochs": None}, "epochs: got null, but it needs a int"),
    ({"run_name": "a/b"}, "must be a plain folder name"), ({"run_name": ".."}, "must be a plain folder name"),
    ({"neck": "bifpnx"}, "neck: 'bifpnx' is not one of"), ({"weights": "nope.pth"}, "weights: 'nope.pth' is not a file"),
    ({"opt": False}, "--set \"opt='no'\""),
    ({"num_threads": -1}, "num_threads must be 0"), ({"one_cycle": {"pct": 0.2}}, "unknown argument 'pct'"),
    ({"one_cycle": {"pct_start": 1.5}}, "pct_start must be a number between"),
    ({"no_aug_epochs": -1}, "no_aug_epochs: -1 must be >= 0"),
])
def test_more_values_fail_before_any_kernel(params, match):
    with pytest.raises(ParamsError, match=re.escape(match) if "--set" in match else match):
        validate_params(params, NB)


def test_unknown_optimizer_fails_before_any_kernel():
    with pytest.raises(ParamsError, match="opt: 'adamw' is not one of"):
        validate_params({"opt": "adamw"}, NB)


@pytest.mark.parametrize("params, match", [
    ({"data_format": "yolo"}, "data_format: 'yolo' is not one of"),
    ({"split": "test"}, r"split: 'test' is not one of \['published', 'random', 'file'\]"),
    ({"split": "file"}, "split: 'file' needs valid_annotations"),
    ({"valid_annotations": "data/bccd/ImageSets/Main/test.txt"}, r"only read with split 'file' \(split is 'published'\)"),
    ({"split": "random", "valid_annotations": "data/bccd/ImageSets/Main/test.txt"}, "add split: file"),
    ({"split": "file", "valid_annotations": "nope.txt"}, "valid_annotations: 'nope.txt' is not a file"),
    ({"data_dir": "data/fridge"}, r"data_dir: .*no published split.*split='random'"),
    ({"data_dir": "data/bccd", "data_format": "coco"}, r"data_dir: .*no recognised COCO json file"),
])
def test_dataset_params_fail_before_any_kernel(params, match):
    with pytest.raises(ParamsError, match=match):
        validate_params(params, NB)


def test_dataset_params_that_fit_the_folder_validate(coco_fridge, tmp_path):
    voc = {"data_dir": "data/fridge", "split": "file", "valid_annotations": "data/bccd/ImageSets/Main/test.txt"}
    assert validate_params(voc, NB)[0] == voc  # any text file passes here; its ids are checked when parsed
    assert validate_params({"data_dir": str(coco_fridge), "split": "random"}, NB)[0]["split"] == "random"
    held_out = tmp_path / "val.json"
    held_out.write_text("{}")
    params = {"data_dir": str(coco_fridge), "data_format": "coco", "split": "file", "valid_annotations": str(held_out)}
    assert validate_params(params, NB)[0] == params
    with pytest.raises(ParamsError, match=r"annotations.json \(the whole set\): no published split"):
        validate_params({"data_dir": str(coco_fridge)}, NB)


@pytest.mark.parametrize("params, match", [
    ({"data_dir": None}, "data_dir: got None; it needs a value"),
    ({"data_dir": ""}, "data_dir: got ''; it needs a value"),
    ({"data_format": None}, "data_format: got None"),
    ({"lr": 0.0, "lr_find_iters": 0}, "lr = 0 asks for lr_find's suggestion, but lr_find_iters = 0"),
])
def test_values_that_would_fail_in_the_notebook_fail_before_it(params, match):
    with pytest.raises(ParamsError, match=match):
        validate_params(params, NB)


@pytest.mark.parametrize(("change", "says", "not_says"), [
    ({"lr": 0.0, "lr_find_iters": 0}, "lr = 0.003", "lr: 0.003"),
    ({"epochs": None}, "got None", "null"),
    ({"strict": "yes"}, "True or False", "true or false"),
    ({"data_format": True}, "got the boolean True", "YAML"),
])
def test_errors_in_the_notebook_cell_speak_python_not_yaml(tmp_path, change, says, not_says):
    """A ParamsError raised by Run.start in the notebook suggested YAML (`lr: 0.003`, `null`)."""
    from conftest import ROOT
    from fpn_lab.runner.context import Run
    from fpn_lab.runner.params import notebook_parameters

    notebook = ROOT / "notebooks" / "getting_started.ipynb"
    namespace = {k: v["default"] for k, v in notebook_parameters(notebook).items()}
    namespace.update(run_dir=str(tmp_path / "r"), interactive=False, **change)
    with pytest.raises(ParamsError, match=re.escape(says)) as err:
        Run.start(namespace, notebook=notebook)
    assert not_says not in str(err.value)


@pytest.mark.parametrize("check, params, match", [
    ("fpn_lab.models.build:check_model_params", {"selection": "retinanet_r5"}, "Did you mean"),
    ("fpn_lab.data.datasets:check_data_params", {"image_size": 300}, "multiple of 32"),
    ("fpn_lab.learner.schedule:check_training_params", {"opt": "lion"}, r"opt: 'lion' is not one of"),
    ("fpn_lab.mmdet_adapter.necks:check_neck_params", {"neck": "fpn2"}, r"neck: 'fpn2' is not one of"),
    ("fpn_lab.device:check_device_params", {"device": "tpu"}, "tpu"),
    ("fpn_lab.distributed:check_params", {"lr_scaling": "sqrt"}, r"lr_scaling: 'sqrt' is not one of"),
])
def test_each_part_checks_its_own_parameters(check, params, match):
    """The runner's validation is the parts' own checks (each callable alone, from its module), not a copy."""
    import importlib

    module, name = check.split(":")
    with pytest.raises(ParamsError, match=match):
        getattr(importlib.import_module(module), name)(params)
    with pytest.raises(ParamsError, match=match):
        validate_params(params, NB)
    getattr(importlib.import_module(module), name)({})  # absent keys are not checked
