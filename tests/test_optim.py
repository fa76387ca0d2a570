"""FusedAdam / FusedSGD take the same steps as fastai's Adam / SGD (they replace them in make_learner)."""

import copy
from functools import partial

import pytest
import torch
from fastai.optimizer import SGD, Adam
from torch import nn

from fpn_lab.learner.optim import FusedAdam, FusedSGD


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def _groups(model):
    ps = list(model.parameters())
    # conv + bn | linear: two fastai parameter groups (no conv bias before BatchNorm: its gradient is
    # ~0, where Adam's g / (|g| + eps) turns rounding noise into steps of +-lr)
    return [ps[:3], ps[3:]]


CASES = {
    "adamw": (partial(Adam, wd=0.05), partial(FusedAdam, wd=0.05)),
    "adam_l2": (partial(Adam, wd=0.05, decouple_wd=False), partial(FusedAdam, wd=0.05, decouple_wd=False)),
    "sgd_mom_decoupled": (partial(SGD, mom=0.9, wd=0.05), partial(FusedSGD, mom=0.9, wd=0.05)),
    "sgd_mom_l2": (partial(SGD, mom=0.9, wd=0.05, decouple_wd=False),
                   partial(FusedSGD, mom=0.9, wd=0.05, decouple_wd=False)),
    "sgd_plain": (partial(SGD, wd=0.0), partial(FusedSGD, wd=0.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_optimizer_matches_fastai_step_by_step(case):
    ref_func, fused_func = CASES[case]
    models = [_model(), _model()]
    opts = [f(_groups(m), lr=1e-2) for f, m in zip((ref_func, fused_func), models)]
    for opt, m in zip(opts, models):  # no decay on the norm layer and the biases, as wd_bn_bias=False does
        for p in (m[1].weight, m[1].bias, m[4].bias):
            opt.state[p]["do_wd"] = False
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for step in range(6):
        for opt in opts:  # a one-cycle-like schedule: lr and momentum change every step, per group
            opt.set_hyper("lr", [1e-2 * (step + 1), 5e-3 * (step + 1)])
            opt.set_hyper("mom", 0.95 - 0.02 * step)
        if step == 0:  # fine_tune's frozen phase: the first group has no gradient, so no update and no state
            for opt in opts:
                opt.freeze_to(1)
        if step == 2:
            for opt in opts:
                opt.unfreeze()
        for opt, m in zip(opts, models):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            # fused kernels round differently; Adam's g / (sqrt(v) + eps) amplifies that for gradients near 0.
            # 2e-5 is 0.1 % of one step at lr 2e-2: a wrong formula (eps inside the root, no bias
            # correction, coupled instead of decoupled decay) differs by 1e-3 or more
            torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=lambda m: f"{case} step {step} {name}: {m}")
    # the update really moved the weights (a no-op optimiser would pass the comparison above)
    assert not torch.allclose(models[1][4].weight, _model()[4].weight)


def test_zero_grad_frees_gradients_and_frozen_groups_stay_put():
    m = _model()
    opt = FusedAdam(_groups(m), lr=1e-2)
    opt.freeze_to(1)
    before = m[0].weight.detach().clone()
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert torch.equal(m[0].weight, before)
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_round_trip_continues_identically():
    a, b = _model(), _model()
    opt_a = FusedAdam(_groups(a), lr=1e-2)
    x = torch.randn(2, 3, 8, 8)
    a(x).sum().backward()
    opt_a.step()
    opt_a.zero_grad()
    b.load_state_dict(a.state_dict())
    opt_b = FusedAdam(_groups(b), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as saved to disk: no shared tensors
    for m, opt in ((a, opt_a), (b, opt_b)):
        m(x).sum().backward()
        opt.step()
    torch.testing.assert_close(b[4].weight, a[4].weight)


def test_learner_freeze_keeps_backbone_weights_then_unfreeze_trains_them(bccd_records):
    """fine_tune's two phases through make_learner's default optimiser (FusedAdam) on a real detector."""
    from fpn_lab.data.dataloaders import Dataset, make_dataloaders
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.models.build import build_model

    parser, train, _ = bccd_records
    ds = Dataset(train[:4], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3)
    learn = make_learner(make_dataloaders(ds, ds, 4), model, parser.class_map, coco=False)
    conv = model.backbone.stem.conv.conv.weight  # a backbone convolution (not a norm: train_bn keeps those training)
    head = model.head.multi_level_conv_cls[0].weight
    conv0, head0 = conv.detach().clone(), head.detach().clone()
    learn.freeze()  # creates the optimiser
    assert isinstance(learn.opt, FusedAdam)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert torch.equal(conv, conv0) and not torch.equal(head, head0)
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert not torch.equal(conv, conv0)
