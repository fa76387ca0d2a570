"""The model carries its input contract: the letterbox fill it is fed with, and the class map with
the source's category ids, through evaluation, prediction, the learner, checkpoints and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DATA
from fpn_lab.core.class_map import ClassMap
from fpn_lab.data.dataloaders import Dataset, collate, make_dataloaders
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.errors import ModelError
from fpn_lab.inference import evaluate, predict_batches
from fpn_lab.models.build import build_model
from fpn_lab.runner.context import set_seed

SIZE = 128


@pytest.fixture(scope="module")
def fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    records = parser.parse(SingleSplitSplitter())[0]
    return parser.class_map, records


@pytest.fixture(scope="module")
def retinanet():
    """RetinaNet R18 (fills with the ImageNet mean) with random head weights, so that its boxes
    and scores depend on every pixel, the padding included (an untrained head scores all alike)."""
    set_seed(0)
    model = build_model("retinanet_r18_fpn_1x", num_classes=4).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.05)
    return model


def _raw_predictions(model, dataset):
    images, targets = collate([dataset[i] for i in range(len(dataset))])
    return predict_batches(model, [(images, [t["geometry"] for t in targets])])


def test_evaluation_feeds_the_models_fill_whatever_the_dataset_was_letterboxed_with(fridge, retinanet):
    """The notebook's run.evaluate(model, valid_ds) predicted on valid_ds as letterboxed (IceVision's
    Adapter default: 114 grey), while training and predict_images used the model's fill (the
    ImageNet mean for VFNet and RetinaNet): metrics.json came from other pixels than training."""
    class_map, records = fridge
    grey = Dataset(records, resize_and_pad(SIZE))  # 114
    own = Dataset(records, resize_and_pad(SIZE, retinanet.pad_value))
    assert retinanet.pad_value != grey.tfms.pad_value
    as_given, as_fed = _raw_predictions(retinanet, grey), _raw_predictions(retinanet, own)
    assert any(len(a["scores"]) != len(b["scores"]) or not np.allclose(a["scores"], b["scores"])
               for a, b in zip(as_given, as_fed))  # the fill changes the detections
    _, from_grey = evaluate(retinanet, grey, class_map)
    _, from_own = evaluate(retinanet, own, class_map)
    assert from_grey and from_grey == from_own


def test_learner_takes_the_training_fill_and_validates_with_it(fridge, retinanet):
    from fpn_lab.learner.learner import make_learner

    class_map, records = fridge
    train = Dataset(records[:4], resize_and_pad(SIZE, retinanet.pad_value))
    valid = Dataset(records[4:], resize_and_pad(SIZE))  # 114: not what the model trains with
    dls = make_dataloaders(train, valid, 2)
    make_learner(dls, retinanet, class_map)
    assert dls.valid.dataset.tfms.pad_value == retinanet.pad_value == train.tfms.pad_value
    assert dls.valid.dataset.records == valid.records


def test_checkpoint_and_onnx_keep_the_fill_and_the_sources_category_ids(fridge, tmp_path):
    """Checkpoints and ONNX metadata kept class names only: a COCO model with category ids
    [0, 3, 7, 12] wrote ids 1..4 after reloading or exporting."""
    from fpn_lab.checkpoint import load_checkpoint, save_checkpoint
    from fpn_lab.export import OnnxDetector, export_onnx

    names, records = fridge
    class_map = ClassMap(names.names, [0, 3, 7, 12])
    model = build_model("yolox_tiny_pafpn_300e", num_classes=4)
    model.pad_value = (10.0, 20.0, 30.0)  # as make_learner sets it from a training set letterboxed so
    path = save_checkpoint(tmp_path / "m.pth", model, class_map, image_size=SIZE)
    reloaded, info = load_checkpoint(path)
    assert info["class_map"].category_ids == [0, 3, 7, 12] and info["class_map"].names == class_map.names
    assert reloaded.pad_value == (10.0, 20.0, 30.0)
    load_checkpoint(path, class_map=class_map)  # the same map: accepted
    with pytest.raises(ModelError, match=r"category ids \[0, 3, 7, 12\]"):
        load_checkpoint(path, class_map=ClassMap(names.names))
    export_onnx(reloaded, SIZE, tmp_path / "m.onnx", class_names=info["class_map"])
    detector = OnnxDetector(tmp_path / "m.onnx")
    assert detector.class_map.category_ids == [0, 3, 7, 12] and detector.pad_value == (10.0, 20.0, 30.0)


def test_run_evaluate_refuses_a_validation_split_without_a_scored_box(fridge, retinanet, tmp_path):
    """A validation split with no scored box gave all-NaN metrics and status: ok."""
    import dataclasses

    from fpn_lab.errors import DataError
    from fpn_lab.runner.context import Run

    class_map, records = fridge
    difficult = [dataclasses.replace(r, difficult=np.ones(len(r.boxes), bool)) for r in records[:2]]
    run = Run({}, run_dir=tmp_path / "r")
    with pytest.raises(DataError, match="no ground-truth box to score"):
        run.evaluate(retinanet, Dataset(difficult, resize_and_pad(SIZE)), class_map)
    assert run.result is None and not (tmp_path / "r" / "predictions.json").exists()


def test_boxes_below_one_pixel_after_the_letterbox_are_reported_and_left_out_of_training(fridge):
    """Boxes that shrink below one pixel reached the heads unreported (RetinaNet's box loss 10x
    normal, VFNet without positives)."""
    import dataclasses

    from fpn_lab.data.transforms import aug_tfms

    _, records = fridge
    r = records[0]
    tiny = np.array([[10, 10, 14, 40], [100, 100, 300, 300]], np.float32)  # 4 px wide: 0.4 px at 64 px of ~640
    rec = dataclasses.replace(r, boxes=tiny, labels=np.array([0, 1]), iscrowd=np.zeros(2, bool),
                              difficult=np.zeros(2, bool))
    with pytest.warns(UserWarning, match=r"1 box\(es\) in 1 image\(s\) .* smaller than 1 px once letterboxed to 64 px"):
        valid = Dataset([rec], resize_and_pad(64))
    _, target = valid[0]
    assert target["train_mask"].tolist() == [False, True] and len(target["boxes"]) == 2  # scored, not trained on
    with pytest.warns(UserWarning, match="smaller than 1 px"):
        train = Dataset([rec], aug_tfms(64))
    for _ in range(5):
        _, target = train[0]
        b = target["boxes"].numpy()
        assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Dataset([rec], resize_and_pad(320))  # 2 px there: nothing to report


def test_run_records_the_model_that_was_evaluated_not_the_parameters_selection(fridge, retinanet, tmp_path):
    """After the picker built RetinaNet R18, metrics.json said preset yolox_tiny (the parameter cell's)
    beside a RetinaNet model block."""
    import json

    from conftest import ROOT
    from fpn_lab.runner.context import Run
    from fpn_lab.runner.params import notebook_parameters

    class_map, records = fridge
    notebook = ROOT / "notebooks" / "getting_started.ipynb"
    namespace = {k: v["default"] for k, v in notebook_parameters(notebook).items()}
    namespace.update(selection="yolox_tiny_pafpn_300e", data_dir="data/fridge", split="random", run_dir=str(tmp_path / "r"),
                     interactive=False)
    run = Run.start(namespace, notebook=notebook)
    run.evaluate(retinanet, Dataset(records, resize_and_pad(SIZE)), class_map)
    metrics = json.loads(run.finish(model=retinanet).read_text())
    assert metrics["preset"] == "retinanet_r18_fpn_1x" and metrics["model"]["neck"] == "FPN"
    assert metrics["selection_changed"] == {"parameter": "yolox_tiny_pafpn_300e", "trained": "retinanet_r18_fpn_1x"}


def test_a_run_folder_it_named_itself_is_renamed_after_the_trained_preset(fridge, tmp_path, monkeypatch):
    """The picker built RetinaNet R18 while the parameter cell said YOLOX-tiny: the run folder stayed
    runs/<time>-yolox_tiny_pafpn_300e and the save cell wrote RetinaNet's model.pth into it."""
    import fpn_lab.runner.paths as paths
    from conftest import ROOT
    from fpn_lab.runner.context import Run
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.runner.params import notebook_parameters

    monkeypatch.setattr(paths, "project_root", lambda: tmp_path)  # the run folder under tmp_path/runs
    class_map, records = fridge
    notebook = ROOT / "notebooks" / "getting_started.ipynb"
    namespace = {k: v["default"] for k, v in notebook_parameters(notebook).items()}
    namespace.update(selection="yolox_tiny_pafpn_300e", data_dir=str(DATA / "fridge"), split="random", interactive=False)
    run = Run.start(namespace, notebook=notebook)
    assert run.dir.name.endswith("-yolox_tiny_pafpn_300e")
    set_seed(0)
    model = build_model("retinanet_r18_fpn_1x", num_classes=len(class_map))
    dls = make_dataloaders(Dataset(records[:2], resize_and_pad(64)), Dataset(records[2:4], resize_and_pad(64)),
                           batch_size=2)
    learn = make_learner(dls, model, class_map, coco=False, cbs=run.callbacks(), path=run.dir)
    learn.fit(1, 1e-4)
    assert run.dir.name.endswith("-retinanet_r18_fpn_1x") and run.dir.is_dir()
    assert [p.name for p in run.dir.parent.iterdir()] == [run.dir.name]  # moved, not copied
    assert "epoch" in (run.dir / "run.log").read_text()  # the epoch lines followed the folder
    assert run.selection_changed == {"parameter": "yolox_tiny_pafpn_300e", "trained": "retinanet_r18_fpn_1x"}


def test_the_sub_pixel_warning_is_not_repeated_by_the_models_view_of_a_dataset(fridge, retinanet):
    """Each evaluation re-letterboxed the dataset with the model's fill and said the same warning again."""
    import dataclasses
    import warnings

    from fpn_lab.inference import letterboxed_for

    _, records = fridge
    tiny = np.array([[10, 10, 14, 40], [100, 100, 300, 300]], np.float32)
    rec = dataclasses.replace(records[0], boxes=tiny, labels=np.array([0, 1]), iscrowd=np.zeros(2, bool),
                              difficult=np.zeros(2, bool))
    with pytest.warns(UserWarning, match="smaller than 1 px"):  # 0.8 px at 128 px
        grey = Dataset([rec], resize_and_pad(SIZE))  # 114 grey; RetinaNet fills with the ImageNet mean
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view = letterboxed_for(retinanet, grey)
    assert view is not grey and view.tfms.pad_value == tuple(float(v) for v in retinanet.pad_value)


def test_the_model_keeps_the_letterbox_and_class_order_it_trained_with(fridge, tmp_path):
    """Only the fill travelled with the model: an evaluation on a dataset letterboxed to another size
    or position predicted on other pixels than training, and a checkpoint could record any size."""
    from fpn_lab.checkpoint import load_checkpoint, save_checkpoint
    from fpn_lab.data.transforms import aug_tfms
    from fpn_lab.learner.learner import make_learner

    class_map, records = fridge
    set_seed(0)
    model = build_model("retinanet_r18_fpn_1x", num_classes=len(class_map))
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.05)
    dls = make_dataloaders(Dataset(records, aug_tfms(64)), Dataset(records, resize_and_pad(64)), batch_size=4)
    make_learner(dls, model, class_map, coco=False)
    assert (model.image_size, model.pad_position, model.class_names) == (64, "top_left", list(class_map.names))
    as_trained = evaluate(model, Dataset(records, resize_and_pad(64)), class_map)[1]
    assert as_trained and evaluate(model, Dataset(records, resize_and_pad(128, position="center")), class_map)[1] == as_trained
    with pytest.raises(ModelError, match="labels would be swapped"):
        evaluate(model, Dataset(records, resize_and_pad(64)), ClassMap(list(reversed(class_map.names))))
    other_ids = ClassMap(class_map.names, [10 * (i + 1) for i in range(len(class_map))])
    with pytest.raises(ModelError, match=r"trained with category ids \[1, 2, 3, 4\].*gives \[10, 20, 30, 40\]"):
        evaluate(model, Dataset(records, resize_and_pad(64)), other_ids)
    with pytest.raises(ModelError, match=r"trained on images letterboxed to 64 px .*image_size=128"):
        save_checkpoint(tmp_path / "m.pth", model, class_map, image_size=128)
    reloaded, info = load_checkpoint(save_checkpoint(tmp_path / "m.pth", model, class_map, image_size=64))
    assert (reloaded.image_size, reloaded.pad_position, reloaded.class_names) == (64, "top_left", list(class_map.names))
    assert reloaded.category_ids == list(class_map.category_ids) == model.category_ids
