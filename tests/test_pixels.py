"""Pixels reach the model exactly as mmdet's own test pipeline and data preprocessor give them."""

from __future__ import annotations

import pytest
import torch

from conftest import DATA
from fpn_lab.data.dataloaders import Dataset, collate
from fpn_lab.data.transforms import resize_and_pad
from fpn_lab.models.build import build_model
from fpn_lab.models.registry import get_preset

SIZE = 320
IMAGE = DATA / "bccd" / "images" / "BloodImage_00000.jpg"


def _mmdet_tensor(model):
    from mmcv.transforms import Compose
    from mmdet.utils import register_all_modules

    register_all_modules()
    pipeline = []
    for step in model.cfg.test_dataloader.dataset.pipeline:
        step = dict(step)
        if step["type"] == "LoadAnnotations":
            continue
        if step["type"] == "Resize":
            step["scale"] = (SIZE, SIZE)
        pipeline.append(step)
    data = Compose(pipeline)({"img_path": str(IMAGE), "img_id": 0})
    out = model.detector.data_preprocessor({"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]}, False)
    return out["inputs"][0]


@pytest.mark.parametrize("name", ["yolox_tiny_pafpn_300e", "retinanet_r18_fpn_1x", "faster_rcnn_r50-caffe_fpn_1x"])
def test_our_input_tensor_equals_mmdets_within_one_grey_level(name, bccd_records):
    parser, train, test = bccd_records
    record = next(r for r in train + test if r.filepath == IMAGE)
    preset = get_preset(name)
    model = build_model(name, num_classes=3)
    images, targets = collate([Dataset([record], resize_and_pad(SIZE, preset.pad_value))[0]])
    ours = model.preprocess(images, targets, training=False)[0][0]
    theirs = _mmdet_tensor(model)
    h, w = theirs.shape[-2:]
    assert ours.shape[0] == theirs.shape[0] == 3 and h <= ours.shape[1] and w <= ours.shape[2]
    grey = 1.0 if preset.std is None else 1.0 / min(preset.std)
    diff = (ours[:, :h, :w] - theirs).abs()
    assert float(diff.max()) <= grey + 1e-4, float(diff.max())
    # same channel order: swapping channels must break the match
    assert float((ours[[2, 1, 0], :h, :w] - theirs).abs().max()) > 10 * grey
