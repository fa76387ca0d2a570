"""Faster R-CNN, the two-stage FPN detector: its losses by name, both stages in prediction, the
RoI extractor's levels, checkpoints, the class layers and a clear export refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import DATA, perturbed
from fpn_lab.checkpoint import check_reload, save_checkpoint
from fpn_lab.data.dataloaders import Dataset, collate
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.data.images import load_image
from fpn_lab.data.transforms import Letterbox, resize_and_pad
from fpn_lab.errors import ModelError
from fpn_lab.inference import predict_images
from fpn_lab.mmdet_adapter.features import assigned_levels
from fpn_lab.mmdet_adapter.wrapper import class_dependent_keys, score_threshold
from fpn_lab.models.build import build_model

PRESET = "faster_rcnn_r50_fpn_1x"


@pytest.fixture(scope="module")
def fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    return parser.class_map, records[:3]


@pytest.fixture(scope="module")
def model(fridge):
    """Faster R-CNN with non-initial weights (every tensor perturbed), so a failed load cannot pass."""
    class_map, _ = fridge
    return perturbed(build_model(PRESET, num_classes=len(class_map)))


def _batch(records, size=128):
    ds = Dataset(records, resize_and_pad(size))
    return collate([ds[i] for i in range(len(ds))])


def test_the_rpn_and_roi_losses_are_reported_by_name_and_add_up(fridge):
    _, records = fridge
    m = build_model(PRESET, num_classes=4)
    images, targets = _batch(records[:2])
    m.train()
    out = m(images, targets)
    assert set(out) == {"loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "acc"}
    terms = [float(v) for k, v in out.items() if k.startswith("loss_")]
    assert all(math.isfinite(v) for v in terms) and float(out["loss"]) == pytest.approx(sum(terms), rel=1e-5)
    assert 0.0 <= float(out["acc"]) <= 100.0  # the RoI head's accuracy (percent) is reported, not added to the loss
    out["loss"].backward()
    rpn = m.detector.rpn_head.rpn_cls.weight.grad
    roi = m.detector.roi_head.bbox_head.fc_cls.weight.grad
    assert rpn is not None and roi is not None and rpn.abs().sum() > 0 and roi.abs().sum() > 0  # both stages learn


def test_validation_is_repeatable_under_a_seed(fridge):
    """The RPN's and the RoI head's samplers draw at random: validation reads torch's seeded generator."""
    _, records = fridge
    m = build_model(PRESET, num_classes=4).eval()
    images, targets = _batch(records[:2])
    torch.manual_seed(1)
    a = m(images, targets)
    torch.manual_seed(1)
    b = m(images, targets)
    assert float(a["loss"]) == float(b["loss"])
    assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(a["predictions"], b["predictions"]))


def test_the_class_layers_are_the_roi_heads_and_score_threshold_reaches_it(model):
    assert model.two_stage and model.num_classes == 4 and model.levels == ("P2", "P3", "P4", "P5", "P6")
    assert sorted(class_dependent_keys(model)) == ["roi_head.bbox_head.fc_cls.bias", "roi_head.bbox_head.fc_cls.weight",
                                                    "roi_head.bbox_head.fc_reg.bias", "roi_head.bbox_head.fc_reg.weight"]
    heads = {id(p) for p in model.head.parameters()}  # the optimiser's head group: RPN and RoI head
    assert heads == {id(p) for p in [*model.detector.rpn_head.parameters(), *model.detector.roi_head.parameters()]}
    default = model.detector.roi_head.test_cfg.score_thr
    with score_threshold(model, 0.0):
        assert model.detector.roi_head.test_cfg.score_thr == 0.0
    assert model.detector.roi_head.test_cfg.score_thr == default == 0.05


def test_predictions_come_back_in_original_pixels(fridge, model):
    _, records = fridge
    path = records[0].filepath
    boxed, _, geometry = Letterbox(128, model.pad_value)(load_image(path))
    images = torch.from_numpy(boxed[None]).permute(0, 3, 1, 2).contiguous()
    with score_threshold(model, 0.0), torch.no_grad():
        (pred,) = predict_images(model, [path], image_size=128)
        (direct,) = model.predict(images, [geometry])
    h, w = records[0].height, records[0].width
    assert len(pred["boxes"]) > 0 and pred["boxes"].shape[1] == 4
    assert (pred["boxes"][:, [0, 2]] <= w + 1e-3).all() and (pred["boxes"][:, [1, 3]] <= h + 1e-3).all()
    np.testing.assert_allclose(pred["boxes"], geometry.to_original(direct["boxes"].numpy()), atol=1e-3)
    assert pred["boxes"].max() > 128  # original pixels (the fridge images are larger), not the 128 px input


def test_checkpoint_round_trip_predicts_the_same_boxes(fridge, model, tmp_path):
    class_map, records = fridge
    path = save_checkpoint(tmp_path / "model.pth", model, class_map, image_size=128)
    reloaded = build_model(PRESET, num_classes=len(class_map), weights=path, class_names=class_map.names)
    report = reloaded.weights_report
    assert len(report.loaded) == report.model_tensors and not reloaded.skipped_weights, str(report)
    assert check_reload(model, reloaded, [r.filepath for r in records], image_size=128) > 0


def test_coco_shaped_weights_leave_exactly_the_roi_class_layers_out(tmp_path):
    src = build_model(PRESET, num_classes=80)
    path = tmp_path / "coco_like.pth"
    torch.save({"state_dict": src.detector.state_dict()}, path)
    m = build_model(PRESET, num_classes=3, weights=path)
    assert sorted(m.skipped_weights) == sorted(class_dependent_keys(m))
    assert len(m.weights_report.loaded) == m.weights_report.model_tensors - 4


def test_levels_follow_the_fpn_papers_rule(fridge, model):
    """The level each box's RoI features come from: k = floor(4 + log2(sqrt(wh) / 224)) (Lin et al.
    2017, eq. 1), P2..P5, computed here independently of mmdet."""
    _, records = fridge
    boxes = torch.tensor([[0, 0, 30, 30], [0, 0, 120, 120], [0, 0, 230, 230], [0, 0, 500, 460], [0, 0, 900, 900]],
                         dtype=torch.float32)
    images, targets = _batch(records[:1], size=128)
    targets[0]["boxes"], targets[0]["labels"] = boxes, torch.zeros(len(boxes), dtype=torch.long)
    targets[0].pop("train_mask", None)
    (levels,) = assigned_levels(model, images, targets)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]).numpy() * (boxes[:, 3] - boxes[:, 1]).numpy())
    expected = np.clip(np.floor(4 + np.log2(side / 224)), 2, 5).astype(int) - 2  # index 0 = P2
    assert levels.tolist() == expected.tolist() == [0, 1, 2, 3, 3]


def test_onnx_export_is_refused_with_the_reason(fridge, model, tmp_path):
    from fpn_lab.export import export_onnx

    class_map, _ = fridge
    with pytest.raises(ModelError, match=r"two-stage detector.*RoIAlign.*predict_images"):
        export_onnx(model, 128, tmp_path / "m.onnx", class_names=class_map)
    with pytest.raises(ModelError, match="two-stage detector"):
        model.head_outputs(torch.zeros(1, 3, 64, 64))
    assert not (tmp_path / "m.onnx").exists()


def test_parameters_match_torchvisions_faster_rcnn_r50_fpn():
    """The same architecture as torchvision's ``fasterrcnn_resnet50_fpn``, whose weights record 41,755,286
    parameters (91 classes, frozen BatchNorm). mmdet's 80-class head has no box regressor for the background
    (4 x 1025 fewer than torchvision's with 81 classes), and trains BatchNorm's scale and shift (53,120 in
    ResNet-50), which frozen BatchNorm keeps as buffers."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ours = count(build_model(PRESET, num_classes=80))
    theirs = count(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81))
    assert theirs - ours == 4 * 1025
    published = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["num_params"]
    assert published == 41_755_286 and ours == published - (91 - 81) * 1025 - (91 - 80) * 4 * 1025 + 53_120
