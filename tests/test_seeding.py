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


@pytest.mark.parametrize("num_workers", [0, 1])
def test_each_process_of_a_group_augments_its_own_way(records, num_workers):
    """Under torchrun every rank seeds torch alike, and loader workers took their augmentation
    seed from torch's global generator: with num_workers > 0 every process drew the same
    augmentation. Here both ranks' shards hold the same picture (one image under 8 ids), so equal
    seeds would give equal batches."""
    import dataclasses

    same_picture = [dataclasses.replace(records[0], record_id=k, image_id=k) for k in range(8)]

    def first_batch(rank):
        set_seed(11)  # as every process of a group does
        dls = make_dataloaders(Dataset(same_picture, aug_tfms(64)), Dataset(same_picture, resize_and_pad(64)), 2,
                               num_workers=num_workers, seed=11)
        dls.train.set_shard(rank, 2)
        try:
            return next(iter(dls.train))[0].clone()
        finally:
            if num_workers:
                dls.train.fake_l._iterator = None

    assert torch.equal(first_batch(0), first_batch(0))  # one rank: reproducible
    assert not torch.equal(first_batch(0), first_batch(1))
