"""N10 (extreme aspect ratios, training and prediction) and one bad image in a prediction batch.

N10's own ``run.py`` writes its five PNGs from a seeded generator; the fixture below writes the
same shapes, so only ``voc/`` (the training-path input) is shipped in tests/data/cases/N10.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CASES
from fpn_lab.data.dataloaders import Dataset
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.data.transforms import aug_tfms, resize_and_pad
from fpn_lab.errors import DataError
from fpn_lab.inference import predict_images
from fpn_lab.mmdet_adapter.wrapper import score_threshold
from fpn_lab.models.build import build_model

#: N10's images: name -> (height, width)
SHAPES = {"wide_2000x3.png": (3, 2000), "tall_4x1500.png": (1500, 4), "tiny_5x7.png": (7, 5),
          "normal_120x90.png": (90, 120), "wide_1000x20.png": (20, 1000)}


@pytest.fixture(scope="module")
def n10_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("n10")
    for name, (h, w) in SHAPES.items():
        Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("yolox_tiny_pafpn_300e", num_classes=2)


def _inside(pred, shape) -> bool:
    h, w = shape
    b = pred["boxes"]
    return bool(((b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()))


def test_n10_every_shape_predicts_singly_and_in_one_batch_with_boxes_inside_the_image(model, n10_dir):
    paths = [n10_dir / name for name in SHAPES]
    with score_threshold(model, 0.0):
        single = [predict_images(model, [p], image_size=64)[0] for p in paths]
        batch = predict_images(model, paths, image_size=64)
    assert len(batch) == len(paths)
    for path, one, many in zip(paths, single, batch):
        assert len(one["boxes"]) > 0 and "error" not in one and "error" not in many, path.name
        assert _inside(one, SHAPES[path.name]) and _inside(many, SHAPES[path.name]), path.name
        np.testing.assert_allclose(one["scores"][:5], many["scores"][:5], atol=1e-4)


def test_n10_training_path_parses_and_transforms_the_2000x3_image():
    parser = VOCBBoxParser(CASES / "N10" / "voc" / "annotations", CASES / "N10" / "voc" / "images")
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert (rec.height, rec.width) == (3, 2000) and rec.num_boxes == 1
    for tfms in (aug_tfms(64), resize_and_pad(64)):
        img, target = Dataset([rec], tfms)[0]
        assert img.shape == (64, 64, 3) and target["geometry"].img_shape[0] == 1
    _, target = Dataset([rec], resize_and_pad(64))[0]
    np.testing.assert_allclose(target["boxes"], [[0.32, 0, 12.8, 1]], atol=1e-5)  # 3 px tall -> the 1 px strip


@pytest.fixture
def with_a_bad_image(n10_dir, tmp_path):
    bad = tmp_path / "cut.jpg"
    shutil.copy(CASES / "N09" / "images" / "img2.jpg", bad)  # header intact, scan data cut at 40 %
    return [n10_dir / "normal_120x90.png", bad, np.zeros((20, 30, 3), np.uint8), n10_dir / "tiny_5x7.png"]


def test_a_bad_image_in_a_batch_raises_naming_it_by_default(model, with_a_bad_image):
    with pytest.raises(DataError, match=r"image #1: .*cut\.jpg \(4642 bytes\).*truncated.*on_error='skip'"):
        predict_images(model, with_a_bad_image, image_size=64)


def test_a_bad_image_is_skipped_with_an_error_entry_and_the_others_keep_their_predictions(model, with_a_bad_image, caplog):
    with score_threshold(model, 0.0), caplog.at_level(logging.WARNING, logger="fpn_lab.inference"):
        out = predict_images(model, with_a_bad_image, image_size=64, batch_size=4, on_error="skip")
        good = predict_images(model, [with_a_bad_image[i] for i in (0, 2, 3)], image_size=64)
    assert len(out) == 4 and "cut.jpg" in caplog.text
    bad = out[1]
    assert "cut.jpg" in bad["error"] and "truncated" in bad["error"]
    assert bad["boxes"].shape == (0, 4) and bad["boxes"].dtype == np.float32
    assert bad["scores"].shape == (0,) and bad["scores"].dtype == np.float32
    assert bad["labels"].shape == (0,) and bad["labels"].dtype == np.int64
    for got, ref in zip((out[0], out[2], out[3]), good):
        assert "error" not in got and len(got["boxes"]) > 0
        np.testing.assert_allclose(got["scores"][:5], ref["scores"][:5], atol=1e-4)


@pytest.mark.parametrize("array, what", [
    (np.zeros((20, 30, 3), np.float32), "float32"), (np.zeros((20, 30, 4), np.uint8), r"\(20, 30, 4\)"),
    (np.zeros((20, 30), np.uint8), r"\(20, 30\)"), (np.zeros((0, 30, 3), np.uint8), r"\(0, 30, 3\)"),
])
def test_arrays_that_are_not_uint8_hw3_are_refused_not_cast(model, array, what):
    with pytest.raises(DataError, match=rf"image #0: .*{what}.*uint8\[H, W, 3\]"):
        predict_images(model, [array], image_size=64)


def test_on_error_must_be_raise_or_skip(model):
    with pytest.raises(DataError, match=r"on_error must be 'raise' or 'skip'; got 'ignore'"):
        predict_images(model, [np.zeros((8, 8, 3), np.uint8)], image_size=64, on_error="ignore")
