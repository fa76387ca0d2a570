"""Each preset's training recipe is translated from its mmdet config, not typed by hand."""

from __future__ import annotations

import pytest
from fastai.callback.training import GradientClip

from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.learner.learner import make_learner, recipe_settings
from fpn_lab.mmdet_adapter.config import load_config
from fpn_lab.mmdet_adapter.config import recipe_from_config
from fpn_lab.core.recipe import Recipe
from fpn_lab.models.registry import get_preset, list_models


@pytest.mark.parametrize("name", list_models())
def test_recipe_reads_the_config(name):
    cfg = load_config(get_preset(name), num_classes=3)
    r = recipe_from_config(cfg)
    opt = cfg.optim_wrapper.optimizer
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay) == (opt.type, opt.lr, opt.get("momentum"), opt.weight_decay)
    assert r.base_batch_size == cfg.auto_scale_lr.base_batch_size and r.max_epochs == cfg.train_cfg.max_epochs
    assert r.warmup in ("linear", "constant", "quadratic")


def test_known_recipes():
    yolox = recipe_from_config(load_config(get_preset("yolox_s_pafpn_300e"), num_classes=3))
    assert (yolox.lr, yolox.weight_decay, yolox.nesterov, yolox.base_batch_size) == (0.01, 5e-4, True, 64)
    assert (yolox.norm_decay_mult, yolox.bias_decay_mult, yolox.warmup, yolox.warmup_epochs) == (0, 0, "quadratic", 5)
    assert yolox.ema_momentum == 0.0001 and yolox.scaled_lr(8) == pytest.approx(0.00125)
    vfnet = recipe_from_config(load_config(get_preset("vfnet_r50_fpn_1x"), num_classes=3))
    assert (vfnet.bias_lr_mult, vfnet.bias_decay_mult, vfnet.warmup_iters) == (2.0, 0.0, 500)
    assert any("bias_lr_mult" in a for a in vfnet.approximations)
    fcos = recipe_from_config(load_config(get_preset("fcos_r50-caffe_fpn_1x"), num_classes=3))
    assert (fcos.warmup, fcos.warmup_iters) == ("constant", 500) and fcos.warmup_start_factor == pytest.approx(1 / 3)


def test_recipe_settings_drive_fastai(bccd_records):
    from fpn_lab.models.build import build_model

    r = Recipe("SGD", 0.01, 16, momentum=0.9, weight_decay=1e-4, grad_clip_max_norm=35.0)
    opt_func, wd, wd_bn_bias, cbs = recipe_settings(r)
    assert wd == 1e-4 and wd_bn_bias and isinstance(cbs[0], GradientClip) and cbs[0].max_norm == 35.0
    parser, train, _ = bccd_records
    ds = Dataset(train[:2], resize_and_pad(64))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3)
    learn = make_learner(make_dataloaders(ds, ds, 2), model, parser.class_map, opt="recipe", coco=False)
    assert learn.wd == 5e-4 and learn.wd_bn_bias is False
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, model.recipe.scaled_lr(2))
    assert learn.opt.hypers[0]["mom"] == 0.9
