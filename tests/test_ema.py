"""Weight EMA: mmdet's ExpMomentumEMA formula, validation on the average with an exact swap back, and the
average in the model after the fit."""

from __future__ import annotations

import math

import pytest
import torch
from fastai.callback.core import Callback

from conftest import DATA
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.learner.ema import WeightEMA
from fpn_lab.learner.learner import make_learner
from fpn_lab.models.build import build_model
from fpn_lab.runner.context import set_seed


@pytest.fixture(scope="module")
def fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    return parser.class_map, records


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Snapshots(Callback):
    """Weights seen at the end of training (before validation) and during validation."""

    order = 45  # after WeightEMA (40): sees its swaps at the start and end of validation

    def __init__(self):
        self.train_end, self.in_valid, self.after_valid = [], [], []

    def after_step(self):
        self.last = _state(self.learn.model.detector)

    def before_validate(self):
        self.train_end.append(self.last)

    def after_batch(self):
        if not self.training:
            self.in_valid.append(_state(self.learn.model.detector))

    def after_validate(self):
        self.after_valid.append(_state(self.learn.model.detector))


def test_validation_uses_the_average_and_training_resumes_on_exactly_its_weights(fridge):
    class_map, records = fridge
    set_seed(0)
    ds = Dataset(records[:4], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(class_map))
    ema, snaps = WeightEMA(momentum=0.5, gamma=1.0), Snapshots()
    learn = make_learner(make_dataloaders(ds, ds, 2), model, class_map, coco=False, cbs=[ema, snaps])
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3)
    name = "bbox_head.multi_level_conv_cls.0.weight"
    for epoch in range(2):
        avg_in_valid = snaps.in_valid[2 * epoch][name]
        assert not torch.equal(avg_in_valid, snaps.train_end[epoch][name])  # validated on the average
        assert all(torch.equal(snaps.after_valid[epoch][k], v) for k, v in snaps.train_end[epoch].items())
    final = _state(model.detector)  # the model ends on the average it was last validated with
    assert all(torch.equal(final[k], v) for k, v in snaps.in_valid[-1].items())
    with learn.no_bar(), learn.no_logging():  # a second fit starts from the training weights, exactly
        learn.fit(1, 0.0)  # lr 0: the weights do not move, so validation sees a fresh average of them
    params = dict(model.detector.named_parameters())  # BatchNorm statistics still move at lr 0; weights do not
    assert all(torch.equal(snaps.train_end[-1][k], snaps.train_end[1][k]) for k in params)


def test_the_average_follows_mmdets_exp_momentum_formula():
    torch.manual_seed(0)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=2)
    ema = WeightEMA(momentum=0.01, gamma=3.0)
    learn = type("L", (), {"model": model})()
    ema.learn = learn
    ema.before_fit()
    p = model.detector.bbox_head.multi_level_conv_cls[0].weight
    expected = p.detach().clone()
    for step in range(4):
        with torch.no_grad():
            p.add_(torch.randn_like(p))
        ema.after_step()
        if step == 0:
            expected = p.detach().clone()  # the first update copies the weights
        else:
            m = (1 - 0.01) * math.exp(-(1 + step) / 3.0) + 0.01
            expected = (1 - m) * expected + m * p.detach()
    avg = ema.ema.module.bbox_head.multi_level_conv_cls[0].weight
    torch.testing.assert_close(avg, expected)


def test_last_good_weights_are_the_averaged_ones_that_were_validated(fridge, tmp_path):
    """With ema, last_good.pth held the raw training weights, not the averaged ones that validation
    scored and the checkpoint saves."""
    class_map, records = fridge
    set_seed(0)
    ds = Dataset(records[:4], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(class_map))
    learn = make_learner(make_dataloaders(ds, ds, 2), model, class_map, coco=False, path=tmp_path,
                         cbs=[WeightEMA(momentum=0.5, gamma=1.0)])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    saved = torch.load(tmp_path / "last_good.pth")
    final = model.state_dict()  # after the fit the model holds the average it was validated with
    assert saved.keys() == final.keys()
    assert all(torch.equal(saved[k], v) for k, v in final.items())
