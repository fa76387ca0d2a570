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


@pytest.mark.parametrize("shape", [(480, 640), (666, 499), (300, 300), (101, 37)])
@pytest.mark.parametrize("position", ["top_left", "center"])
def test_letterbox_maps_boxes_back_exactly(shape, position):
    lb = Letterbox(320, position=position)
    boxes = np.array([[0, 0, shape[1], shape[0]], [5, 7, 20, 30]], np.float32)
    img, net, g = lb(np.zeros((*shape, 3), np.uint8), boxes)
    assert img.shape == (320, 320, 3) and max(g.img_shape) == 320
    np.testing.assert_allclose(net[0], [g.pad_left, g.pad_top, g.pad_left + g.img_shape[1], g.pad_top + g.img_shape[0]], atol=1e-3)
    np.testing.assert_allclose(g.to_original(net), boxes, atol=1e-3)


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
