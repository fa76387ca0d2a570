"""Training through the fastai Learner: overfitting two images, the NaN guard, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback, CancelValidException

from conftest import DATA
from fpn_lab.checkpoint import load_checkpoint, save_checkpoint
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.errors import DataError, ModelError, TrainingError
from fpn_lab.inference import predict_dataset
from fpn_lab.inference import predict_images
from fpn_lab.learner.learner import make_learner
from fpn_lab.mmdet_adapter.wrapper import recompute_batchnorm_stats, score_threshold
from fpn_lab.models.build import build_model
from fpn_lab.runner.context import set_seed


@pytest.fixture(scope="module")
def fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    return parser, parser.parse(SingleSplitSplitter())[0]


def _iou(a, b):
    x1, y1 = np.maximum(a[:, None, :2], b[None, :, :2]).transpose(2, 0, 1)
    x2, y2 = np.minimum(a[:, None, 2:], b[None, :, 2:]).transpose(2, 0, 1)
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


# Faster R-CNN with a ResNet-18 and 64 sampled RoIs per image instead of 512: its RoI head's two 1024-wide layers
# over 512 RoIs per image cost most of a step at this size
SMALL_RCNN = {"model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512],
              "model.train_cfg.rcnn.sampler.num": 64, "model.train_cfg.rpn_proposal.max_per_img": 300}


@pytest.mark.parametrize("name, neck, lr, cfg", [("yolox_tiny_pafpn_300e", None, 3e-3, None),
                                                 ("retinanet_r18_fpn_1x", None, 1e-3, None),
                                                 ("fcos_r50-caffe-giou_fpn_1x", None, 1e-3, None),
                                                 ("faster_rcnn_r50_fpn_1x", None, 1e-3, SMALL_RCNN),
                                                 ("efficientdet_effb0_bifpn_300e", None, 3e-3, None),
                                                 ("yolox_tiny_pafpn_300e", "bifpn", 3e-3, None)])
def test_overfit_two_images(fridge, name, neck, lr, cfg):
    parser, records = fridge
    set_seed(0)
    recs = records[:2]
    ds = Dataset(recs, resize_and_pad(128))
    dls = make_dataloaders(ds, ds, 2)
    model = build_model(name, num_classes=len(parser.class_map), neck=neck, cfg_options=cfg)
    losses = []

    class RawLoss(Callback):  # Recorder.losses are smoothed; keep the raw per-batch loss
        def after_loss(self):
            if self.training:
                losses.append(float(self.learn.loss))

        def before_validate(self):  # 60 one-step epochs: validating each would triple the time
            raise CancelValidException()

    learn = make_learner(dls, model, parser.class_map, coco=False, wd=0.0, cbs=[RawLoss()])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(60, lr, pct_start=0.1)
    assert len(losses) == 60
    assert np.mean(losses[-5:]) <= 0.5 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    # 60 steps with YOLOX's BN momentum of 0.03 leave the running statistics behind the weights:
    # re-estimate them from training batches (precise BN) before predicting in eval mode.
    recompute_batchnorm_stats(model, [dls.train.one_batch() for _ in range(5)])
    for rec, pred in zip(recs, predict_dataset(model, ds)):
        top = pred["scores"] >= 0.05
        for gt_box, gt_label in zip(rec.boxes, rec.labels):
            same = top & (pred["labels"] == gt_label)
            assert same.any() and _iou(gt_box[None], pred["boxes"][same]).max() >= 0.5, (rec.filepath.name, gt_box, pred)


def test_batch_size_larger_than_training_set_is_an_error(fridge):
    _, records = fridge
    ds = Dataset(records[:3], resize_and_pad(64))
    with pytest.raises(DataError, match="larger than the training set"):
        make_dataloaders(ds, ds, 4)


def test_last_incomplete_training_batch_is_dropped(fridge):
    _, records = fridge
    ds = Dataset(records[:5], resize_and_pad(32))
    dls = make_dataloaders(ds, ds, 2)
    assert [len(b[0]) for b in dls.train] == [2, 2]
    assert [len(b[0]) for b in dls.valid] == [2, 2, 1]


def test_nan_loss_stops_with_our_error_and_keeps_the_last_good_checkpoint(fridge, tmp_path):
    parser, records = fridge
    ds = Dataset(records[:2], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    ckpt = tmp_path / "last_good.pth"
    learn = make_learner(make_dataloaders(ds, ds, 2), model, parser.class_map, checkpoint=ckpt)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)
    assert ckpt.exists()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite training loss nan at epoch 1/1 \(row 0 .*batch 1/\d+ \(learning rate"), learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)
    assert torch.load(ckpt)  # the last good weights survive


def test_checkpoint_round_trip_and_class_map_check(fridge, tmp_path):
    parser, records = fridge
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    path = save_checkpoint(tmp_path / "m.pth", model, parser.class_map, image_size=64)
    reloaded, info = load_checkpoint(path, class_map=parser.class_map)
    assert info["preset"] == "yolox_tiny_pafpn_300e" and info["class_names"] == parser.class_map.names
    with score_threshold(model, 0.0), score_threshold(reloaded, 0.0):  # an untrained head scores below 0.01
        a = predict_images(model, [records[0].filepath], image_size=64)[0]
        b = predict_images(reloaded, [records[0].filepath], image_size=64)[0]
    assert len(a["boxes"]) > 0
    np.testing.assert_allclose(a["boxes"], b["boxes"])
    np.testing.assert_allclose(a["scores"], b["scores"])
    with pytest.raises(ModelError, match=r"trained with classes .* but .* were expected"):
        load_checkpoint(path, class_map=list(reversed(parser.class_map.names)))


def test_batch_of_one_at_32px_is_refused_clearly_and_small_batches_warn(fridge):
    parser, records = fridge
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    ds = Dataset(records[:3], resize_and_pad(32))
    with pytest.raises(DataError, match="single value per channel"):
        make_learner(make_dataloaders(ds, ds, 1), model, parser.class_map)
    ds64 = Dataset(records[:3], resize_and_pad(64))
    with pytest.warns(UserWarning, match="batch_size 1 < 4"):
        learn = make_learner(make_dataloaders(ds64, ds64, 1), model, parser.class_map)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)  # three single-image batches train


def test_checkpoint_keeps_the_neck_choice(fridge, tmp_path):
    parser, records = fridge
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map), neck="fpn")
    path = save_checkpoint(tmp_path / "m.pth", model, parser.class_map, image_size=64)
    reloaded, info = load_checkpoint(path)
    assert info["neck"] == "fpn" and type(reloaded.neck).__name__ == "FPN"


def test_fine_tune_from_local_coco_style_weights(fridge, tmp_path):
    parser, records = fridge
    src = build_model("yolox_tiny_pafpn_300e", num_classes=80)
    path = tmp_path / "coco.pth"
    torch.save({"state_dict": src.detector.state_dict()}, path)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map), weights=path)
    ds = Dataset(records[:4], resize_and_pad(64))
    learn = make_learner(make_dataloaders(ds, ds, 2), model, parser.class_map, coco=False)
    learn.freeze()
    assert not any(p.requires_grad for p in model.backbone.parameters() if p.ndim > 1)
    assert all(p.requires_grad for p in model.head.parameters())
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert all(p.requires_grad for p in model.parameters()) and len(learn.recorder.values) == 1


def test_lr_find_never_saves_diverged_weights_as_last_good(fridge, tmp_path):
    from fpn_lab.learner.learner import find_lr

    parser, records = fridge
    ds = Dataset(records[:4], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    ckpt = tmp_path / "last_good.pth"
    learn = make_learner(make_dataloaders(ds, ds, 2), model, parser.class_map, checkpoint=ckpt, coco=False,
                         path=tmp_path)
    with learn.no_bar():
        assert find_lr(learn, 10, show_plot=False) > 0
    assert not ckpt.exists() and not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match="one target dict per image"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None)


def test_recompute_batchnorm_stats_without_batches_is_an_error_and_keeps_the_statistics():
    """recompute_batchnorm_stats([]) used to reset every BatchNorm to mean 0 / var 1 and report success."""
    model = build_model("yolox_tiny_pafpn_300e", num_classes=2)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for k, m in enumerate(bns):
            m.running_mean.fill_(0.1 * k + 0.5)
            m.running_var.fill_(2.0)
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    with pytest.raises(ModelError, match="no batches were given"):
        recompute_batchnorm_stats(model, [])
    for m, (mean, var) in zip(bns, before):
        torch.testing.assert_close(m.running_mean, mean)
        torch.testing.assert_close(m.running_var, var)


def test_coco_metric_scores_the_loader_that_was_validated(fridge):
    """learn.validate(ds_idx=0) validates the training loader, but the metric took its ground truth
    from learn.dls.valid whatever was validated: here a valid split without boxes gave AP nan
    ("no ground-truth boxes") for a training split that has them."""
    import dataclasses
    import math

    from fpn_lab.metrics.coco import score_detections

    parser, records = fridge
    empty = [dataclasses.replace(r, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                                 iscrowd=np.zeros(0, bool), difficult=np.zeros(0, bool)) for r in records[:2]]
    set_seed(0)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    dls = make_dataloaders(Dataset(records[:4], resize_and_pad(64)), Dataset(empty, resize_and_pad(64)), 2)
    learn = make_learner(dls, model, parser.class_map, cbs=[])
    acc = learn.metrics[0].acc
    with learn.no_bar(), learn.no_logging(), score_threshold(model, 0.0):
        _, ap, ap50 = learn.validate(ds_idx=0)
    assert not math.isnan(ap) and not math.isnan(ap50)
    assert {d["image_id"] for d in acc.detections} <= {r.image_id for r in records[:4]} and acc.detections
    assert ap == score_detections(records[:4], acc.detections, parser.class_map)[0]["AP"]
    with learn.no_bar(), learn.no_logging():
        _, ap, _ = learn.validate()  # the valid split (no boxes): nothing to score
    assert math.isnan(ap)


def test_recompute_batchnorm_stats_failing_midway_keeps_the_statistics(fridge):
    """A batch that fails after others left the statistics averaged over the first ones."""
    parser, records = fridge
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    batch = next(iter(make_dataloaders(Dataset(records[:2], resize_and_pad(64)), Dataset(records[:2], resize_and_pad(64)),
                                       2).valid))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()

    def batches():
        yield batch
        raise RuntimeError("a loader failed")

    with pytest.raises(RuntimeError, match="a loader failed"):
        recompute_batchnorm_stats(model, batches())
    torch.testing.assert_close(bn.running_mean, before)


def test_each_loss_term_is_kept_per_epoch_in_history_and_the_epoch_line(fridge):
    """mmdet's loss terms (YOLOX: loss_cls, loss_bbox, loss_obj) as image-weighted means over each training epoch."""
    import io

    from fpn_lab.learner.learner import history
    from fpn_lab.learner.progress import EpochLine

    parser, records = fridge
    set_seed(0)
    ds = Dataset(records[:4], resize_and_pad(64))
    dls = make_dataloaders(ds, ds, 2)
    seen = []

    class Terms(Callback):
        order = 1  # after MMDetCallback, on the same prediction

        def before_epoch(self):
            seen.append([])

        def after_loss(self):
            if self.training:
                seen[-1].append((len(self.xb[0]), {k: float(v) for k, v in self.pred.items() if k.startswith("loss_")}))

    console = io.StringIO()
    learn = make_learner(dls, build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map)),
                         parser.class_map, coco=False, cbs=[Terms(), EpochLine(console=console)])
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3)
    rows = history(learn)
    assert [len(batches) for batches in seen] == [2, 2]
    for row, batches, line in zip(rows, seen, console.getvalue().splitlines()):
        names = set(batches[0][1])
        assert names == {"loss_cls", "loss_bbox", "loss_obj"} and names <= set(row)
        for name in names:
            mean = sum(n * terms[name] for n, terms in batches) / sum(n for n, _ in batches)
            assert row[name] == pytest.approx(mean, rel=1e-6)
            assert f"{name} {row[name]:.4f}" in line
