"""Guards against silently wrong training: the validation loss weighs images, a model of another class
count is refused, and non-finite values stop training or validation with a TrainingError that says where."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import CASES, DATA
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.parsers import COCOBBoxParser, VOCBBoxParser
from fpn_lab.data.splits import RandomSplitter, SingleSplitSplitter
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.errors import ModelError, TrainingError
from fpn_lab.inference import evaluate
from fpn_lab.learner.learner import make_learner
from fpn_lab.models.build import build_model
from fpn_lab.runner.context import set_seed
from fpn_lab.viz.draw import show_results

PRESET = "yolox_tiny_pafpn_300e"


@pytest.fixture(scope="module")
def fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    return parser.class_map, records


def _learner(fridge, **kwargs):
    class_map, records = fridge
    ds = Dataset(records[:4], resize_and_pad(64))
    model = build_model(PRESET, num_classes=len(class_map))
    return make_learner(make_dataloaders(ds, ds, 2), model, class_map, **kwargs)


def _fake_batch(learn, boxes_per_image, loss):
    targets = [{"boxes": torch.zeros(n, 4), "labels": torch.zeros(n, dtype=torch.long)} for n in boxes_per_image]
    return SimpleNamespace(xb=(torch.zeros(len(targets), 3, 8, 8), targets), yb=(targets,),
                           loss=torch.tensor(loss), to_detach=learn.to_detach)


def test_valid_loss_is_the_mean_over_images_not_over_the_first_images_boxes(fridge):
    learn = _learner(fridge, coco=False)
    avg = learn.recorder.loss  # what the Recorder averages validation losses with
    avg.reset()
    avg.accumulate(_fake_batch(learn, [16, 0], 1.0))  # two images each, mean loss 1 then 3
    avg.accumulate(_fake_batch(learn, [0, 16], 3.0))
    assert float(avg.value) == pytest.approx(2.0)
    avg.reset()  # an all-negative validation set still has a loss
    avg.accumulate(_fake_batch(learn, [0, 0], 1.5))
    assert avg.value is not None and float(avg.value) == pytest.approx(1.5)


def test_a_model_for_another_class_count_is_refused_before_training():
    case = CASES / "R10"  # params ask num_classes 5 for a dataset of 2 categories
    parser = COCOBBoxParser(case / "annotations.json", case / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    model = build_model("retinanet_r18_fpn_1x", num_classes=5)
    ds = Dataset(records, resize_and_pad(64))
    message = r"num_classes=5 but the dataset's class map has 2 classes \(widget, gadget\)"
    with pytest.raises(ModelError, match="make_learner: .*" + message):
        make_learner(make_dataloaders(ds, ds, 1), model, parser.class_map)
    with pytest.raises(ModelError, match="evaluate: .*" + message):
        evaluate(model, ds, parser.class_map)
    preds = [{"boxes": torch.tensor([[1.0, 1, 9, 9]]).numpy(), "scores": torch.tensor([0.9]).numpy(),
              "labels": torch.tensor([4]).numpy()}]
    with pytest.raises(ModelError, match=r"label 4 has no class name: the class map has 2 classes"):
        show_results([torch.zeros(48, 64, 3, dtype=torch.uint8).numpy()], records, preds, parser.class_map.names)


def test_non_finite_validation_is_a_training_error_naming_the_phase(fridge):
    learn = _learner(fridge)
    with torch.no_grad():
        learn.model.detector.bbox_head.multi_level_conv_obj[0].weight.fill_(float("inf"))
    with pytest.raises(TrainingError, match=r"non-finite validation loss nan at epoch 1/1 \(row 0 of the progress table.*batch 1/2 "
                                            r"\(learning rate .*\)"), learn.no_bar(), learn.no_logging():
        learn.validate()


def test_non_finite_activations_with_finite_weights_stop_training(fridge, tmp_path):
    learn = _learner(fridge, checkpoint=tmp_path / "last_good.pth")
    with torch.no_grad():
        conv = learn.model.detector.backbone.stem.conv.conv
        conv.weight.mul_(1e37)  # finite weights whose activations overflow to inf
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    with pytest.raises(TrainingError, match=r"non-finite training loss nan at epoch 1/1 \(row 0.*batch 1/2 .*"
                                            r"non-finite values in features\[0\]"), learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)
    assert not (tmp_path / "last_good.pth").exists()


def test_a_too_high_learning_rate_stops_at_the_first_non_finite_loss(tmp_path):
    case = CASES / "R24"  # YOLOX, lr 10, 2 epochs, batch 2, half the 4 images for validation
    set_seed(0)
    parser = COCOBBoxParser(case / "annotations.json", case / "images")
    train, valid = parser.parse(RandomSplitter([0.5, 0.5], seed=0))
    dls = make_dataloaders(Dataset(train, resize_and_pad(64)), Dataset(valid, resize_and_pad(64)), 2)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    learn = make_learner(dls, model, parser.class_map, checkpoint=tmp_path / "last_good.pth")
    with pytest.raises(TrainingError) as e, learn.no_bar(), learn.no_logging():
        learn.fit(2, 10.0)
    msg = str(e.value)
    assert "non-finite" in msg and "epoch" in msg and "batch" in msg and "learning rate 10" in msg, msg
    assert "loss_" in msg or "non-finite values in" in msg, msg  # the term (or tensor) that went non-finite
    good = tmp_path / "last_good.pth"
    if good.exists():  # only ever weights of an epoch whose losses were all finite
        assert all(torch.isfinite(v).all() for v in torch.load(good).values() if v.is_floating_point())


def test_user_mistakes_raise_the_projects_error_classes(fridge):
    from fpn_lab.errors import DataError, ParamsError
    from fpn_lab.learner.learner import find_lr
    from fpn_lab.metrics.coco import detections_to_coco, score_detections

    class_map, records = fridge
    ds = Dataset(records[:4], resize_and_pad(64))
    model = build_model(PRESET, num_classes=len(class_map))
    with pytest.raises(ParamsError, match=r"opt must be one of \['adam', 'sgd', 'recipe'\]; got 'adamw'"):
        make_learner(make_dataloaders(ds, ds, 2), model, class_map, opt="adamw")
    learn = make_learner(make_dataloaders(ds, ds, 2), model, class_map)
    with pytest.raises(ParamsError, match="lr_find needs at least 10 iterations for its suggestion; got 5"):
        find_lr(learn, 5)
    with pytest.raises(ModelError, match="needs one target dict per image"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None)
    dets = detections_to_coco(999, records[0].boxes, [0.9] * records[0].num_boxes, records[0].labels, class_map)
    with pytest.raises(DataError, match=r"image ids that are not in the ground truth: \[999\]"):
        score_detections(records[:2], dets, class_map)[0]
