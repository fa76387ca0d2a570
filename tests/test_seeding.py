"""One seed, one stream of augmented batches: albumentations' own generators are seeded per epoch and worker."""

from __future__ import annotations

import pytest
import torch

from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.transforms import aug_tfms, resize_and_pad
from fpn_lab.runner.context import set_seed


def _epochs(records, seed: int, *, n_epochs: int = 2, num_workers: int = 0, draws_before: int = 0):
    """Augmented training batches of ``n_epochs`` epochs from a loader built the notebook's way."""
    set_seed(seed)
    train = Dataset(records, aug_tfms(64))
    for _ in range(draws_before):  # e.g. show_samples drawing from the same transform
        train[0]
    dls = make_dataloaders(train, Dataset(records, resize_and_pad(64)), 2, num_workers=num_workers, seed=seed)
    out = []
    try:
        for _ in range(n_epochs):
            out += [(images.clone(), [t["boxes"].clone() for t in targets]) for images, targets in dls.train]
    finally:
        if num_workers:
            dls.train.fake_l._iterator = None  # let persistent workers go
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and len(bx) == len(by) and all(torch.equal(p, q) for p, q in zip(bx, by))
                                    for (x, bx), (y, by) in zip(a, b))


@pytest.fixture(scope="module")
def records(bccd_records):
    _, train, _ = bccd_records
    return train[:6]


def test_one_seed_gives_identical_augmented_batches_and_another_seed_differs(records):
    first = _epochs(records, 3)
    assert _same(first, _epochs(records, 3))
    assert not _same(first, _epochs(records, 4))
    assert not _same(first[:3], first[3:])  # the second epoch is not a replay of the first


def test_draws_before_training_do_not_change_the_batches(records):
    assert _same(_epochs(records, 5, n_epochs=1), _epochs(records, 5, n_epochs=1, draws_before=3))


def test_workers_are_seeded_too(records):
    assert _same(_epochs(records, 7, n_epochs=1, num_workers=2), _epochs(records, 7, n_epochs=1, num_workers=2))
