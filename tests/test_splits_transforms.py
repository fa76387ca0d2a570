"""Splitters, the letterbox geometry and augmentation keeping boxes on their objects."""

from __future__ import annotations

import numpy as np
import pytest

from fpn_lab.core.records import Record
from fpn_lab.data.splits import RandomSplitter
from fpn_lab.data.transforms import Letterbox, aug_tfms
from fpn_lab.errors import DataError


def _records(n):
    return [Record(i, f"img{i}.jpg", 10, 10) for i in range(n)]


def test_random_splitter_is_deterministic_for_a_seed_and_covers_everything():
    recs = _records(50)
    a = RandomSplitter([0.8, 0.2], seed=7).split(recs)
    b = RandomSplitter([0.8, 0.2], seed=7).split(recs)
    c = RandomSplitter([0.8, 0.2], seed=8).split(recs)
    ids = lambda s: [[r.record_id for r in part] for part in s]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert [len(p) for p in a] == [40, 10] and sorted(sum(ids(a), [])) == list(range(50))


def test_published_split_sizes(bccd_records):
    _, train, test = bccd_records
    assert (len(train), len(test)) == (292, 72)
    assert not {r.filepath.stem for r in train} & {r.filepath.stem for r in test}


@pytest.mark.parametrize("shape", [(480, 640), (666, 499), (300, 300), (101, 37), (3, 2000), (1500, 4), (7, 5), (1, 1)])
@pytest.mark.parametrize("position", ["top_left", "center"])
def test_letterbox_maps_boxes_back_exactly(shape, position):
    lb = Letterbox(320, position=position)
    h, w = shape
    boxes = np.array([[0, 0, w, h], [0.1 * w, 0.2 * h, 0.6 * w, 0.9 * h]], np.float32)
    img, net, g = lb(np.zeros((*shape, 3), np.uint8), boxes)
    assert img.shape == (320, 320, 3) and max(g.img_shape) == 320 and min(g.img_shape) >= 1
    np.testing.assert_allclose(net[0], [g.pad_left, g.pad_top, g.pad_left + g.img_shape[1], g.pad_top + g.img_shape[0]], atol=1e-3)
    np.testing.assert_allclose(g.to_original(net), boxes, atol=1e-3)


@pytest.mark.parametrize("shape, img_shape", [((3, 2000), (1, 64)), ((1500, 4), (64, 1)), ((1, 10000), (1, 64))])
def test_n10_a_side_that_rounds_to_0_px_is_clamped_to_1_px_and_maps_back_exactly(shape, img_shape):
    # N10: 2000x3 at 64 px is 0.096 px tall; cv2.resize refused a 0 px side (training and prediction crashed)
    img = np.full((*shape, 3), 200, np.uint8)
    out, _, g = Letterbox(64, pad_value=(0, 0, 0))(img)
    assert g.img_shape == img_shape
    assert (out[:img_shape[0], :img_shape[1]] == 200).all() and out.sum() == 200 * 3 * img_shape[0] * img_shape[1]
    full = np.array([[0, 0, shape[1], shape[0]]], np.float32)
    np.testing.assert_allclose(g.to_network(full), [[0, 0, img_shape[1], img_shape[0]]], atol=1e-4)
    np.testing.assert_allclose(g.to_original([[0, 0, 64, 64]]), full, atol=1e-3)  # clipped to the image
    np.testing.assert_allclose(g.to_original(g.to_network(full)), full, atol=1e-3)


@pytest.mark.parametrize("presize", [None, 128])
@pytest.mark.parametrize("shape, box", [((3, 2000), [10, 0, 400, 3]), ((1500, 4), [0, 10, 4, 400])])
def test_n10_augmentation_of_an_extreme_aspect_ratio_does_not_crash(shape, box, presize):
    tfm = aug_tfms(64, presize=presize)
    for _ in range(5):
        out, net, labels, g = tfm(np.zeros((*shape, 3), np.uint8), np.array([box], np.float32), np.array([0]))
        assert out.shape == (64, 64, 3) and min(g.img_shape) >= 1
        assert net.shape == (len(labels), 4) and ((net >= 0) & (net <= 64)).all()


def test_letterbox_rejects_sizes_that_are_not_multiples_of_32():
    with pytest.raises(DataError, match="multiple of 32"):
        Letterbox(300)


def test_augmentation_keeps_each_box_on_its_object():
    rng = np.random.default_rng(0)
    img = np.zeros((240, 320, 3), np.uint8)
    boxes = np.array([[20, 30, 80, 90], [150, 100, 260, 200]], np.float32)
    colors = [(255, 0, 0), (0, 255, 0)]
    for (x1, y1, x2, y2), c in zip(boxes.astype(int), colors):
        img[y1:y2, x1:x2] = c
    tfm = aug_tfms(256, pad_value=(0, 0, 0), color=False)
    for _ in range(20):
        out, net, labels, _ = tfm(img, boxes, np.array([0, 1]))
        assert len(net) >= 1
        for b, lab in zip(net.round().astype(int), labels):
            patch = out[b[1] + 2:b[3] - 2, b[0] + 2:b[2] - 2].reshape(-1, 3).astype(float)
            if len(patch) == 0:
                continue
            mean = patch.mean(0)
            assert mean[lab] > 200 and mean[1 - lab] < 50, (b, mean)
        rng.random()
