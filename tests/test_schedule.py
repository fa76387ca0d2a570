"""The training schedule: YOLOX's last-epochs switch (augmentation off, L1 on, then restored) and the one-cycle shape."""

from __future__ import annotations

import pytest
from fastai.callback.core import Callback

from conftest import DATA
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.data.transforms import Augment, Letterbox, aug_tfms, resize_and_pad
from fpn_lab.errors import ParamsError
from fpn_lab.learner.learner import make_learner
from fpn_lab.learner.mode_switch import LastEpochsSwitch
from fpn_lab.models.build import build_model
from fpn_lab.runner.context import set_seed


class Seen(Callback):
    """Per training batch: the dataset's transform type, the head's use_l1 and the loss terms computed."""

    order = 50

    def before_fit(self):
        self.rows = []

    def after_loss(self):
        if self.training:
            self.rows.append((self.epoch, type(self.dls.train.dataset.tfms), self.learn.model.detector.bbox_head.use_l1,
                              "loss_l1" in self.learn.pred))


@pytest.fixture(scope="module")
def fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    return parser.class_map, records


def _learner(fridge, no_aug_epochs, num_workers=0):
    class_map, records = fridge
    set_seed(0)
    train, valid = Dataset(records[:4], aug_tfms(64)), Dataset(records[4:], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(class_map))
    seen = Seen()
    dls = make_dataloaders(train, valid, 2, num_workers=num_workers)
    learn = make_learner(dls, model, class_map, coco=False, no_aug_epochs=no_aug_epochs, cbs=[seen])
    return learn, seen


def test_last_epoch_trains_unaugmented_with_l1_and_the_fit_ends_restored(fridge):
    learn, seen = _learner(fridge, no_aug_epochs=1)
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, 1e-3)
    by_epoch = {e: {(t, l1, has) for ep, t, l1, has in seen.rows if ep == e} for e in range(3)}
    assert by_epoch[0] == by_epoch[1] == {(Augment, False, False)}
    assert by_epoch[2] == {(Letterbox, True, True)}  # the letterbox validation uses, and YOLOX's L1 term
    assert isinstance(learn.dls.train.dataset.tfms, Augment)
    assert learn.model.detector.bbox_head.use_l1 is False


def test_lr_find_is_not_switched(fridge):
    learn, seen = _learner(fridge, no_aug_epochs=1)
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=4, show_plot=False)
    assert seen.rows and {t for _, t, _, _ in seen.rows} == {Augment}


def test_worker_processes_are_refused_before_any_epoch_trains(fridge):
    learn, seen = _learner(fridge, no_aug_epochs=1, num_workers=1)
    with learn.no_bar(), learn.no_logging(), pytest.raises(ParamsError, match="num_workers = 0"):
        learn.fit(3, 1e-3)
    assert getattr(seen, "rows", []) == []


@pytest.mark.parametrize("bad", [0, -1, 1.0, True])
def test_bad_epoch_counts_are_refused(bad):
    with pytest.raises(ParamsError, match="num_epochs"):
        LastEpochsSwitch(bad)


def test_train_applies_the_one_cycle_shape(fridge):
    from fpn_lab.learner.learner import train

    learn, _ = _learner(fridge, no_aug_epochs=0)
    with learn.no_bar(), learn.no_logging():
        train(learn, 2, 1e-3, one_cycle={"pct_start": 0.5, "div": 10.0})
    lrs = learn.recorder.lrs  # one per training step: 2 epochs x 2 batches
    assert lrs[0] == pytest.approx(1e-4)  # lr / div
    assert max(lrs) == pytest.approx(1e-3, rel=1e-3) and lrs.index(max(lrs)) == 2  # peak at half the steps


@pytest.mark.parametrize("kwargs, match", [({"one_cycle": {"pct": 0.3}}, "unknown argument 'pct'"),
                                           ({"one_cycle": {"pct_start": 1.0}}, "pct_start must be"),
                                           ({"one_cycle": {"div": 0.5}}, "div must be"),
                                           ({"epochs": 0}, "epochs must be"), ({"lr": 0.0}, "lr must be")])
def test_train_refuses_bad_schedules_before_training(kwargs, match):
    from fpn_lab.learner.learner import train

    args = {"epochs": 1, "lr": 1e-3, **kwargs}
    with pytest.raises(ParamsError, match=match):
        train(None, args["epochs"], args["lr"], one_cycle=args.get("one_cycle"))
