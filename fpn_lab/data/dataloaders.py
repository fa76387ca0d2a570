"""Datasets and fastai DataLoaders for detection records."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader

from fpn_lab.core.records import Record
from fpn_lab.data.images import load_image
from fpn_lab.data.transforms import MIN_BOX_PX, Augment, Letterbox, too_small
from fpn_lab.errors import DataError


def _warn_sub_pixel_boxes(records: list[Record], letterbox: Letterbox) -> int:
    """Warn when boxes become smaller than :data:`~fpn_lab.data.transforms.MIN_BOX_PX` once
    letterboxed to ``letterbox.size`` (they are left out of training and of the validation loss;
    the COCO evaluation still scores them, in original pixels). Returns their number."""
    small, images, example = 0, 0, None
    for r in records:
        if not len(r.boxes):
            continue
        n = int((too_small(letterbox.geometry(r.height, r.width).to_network(r.boxes)) & r.train_mask).sum())
        if n:
            small, images = small + n, images + 1
            example = example or r.filepath.name
    if small:
        warnings.warn(f"{small} box(es) in {images} image(s) (e.g. {example}) are smaller than "
                      f"{MIN_BOX_PX:g} px once letterboxed to {letterbox.size} px: they are left out of training "
                      "(no anchor or point can be assigned to them) but still scored by the evaluation, as misses if "
                      "the model cannot find them. Fix: a larger image_size, or tile large images.", stacklevel=3)
    return small


def _check_records(records) -> list[Record]:
    """``records`` as a list, each a :class:`Record`, their ``record_id`` and ``image_id`` unique.

    Raises:
        DataError: an element is not a Record (``parser.parse()``'s ``[train, valid]`` passed
            whole), or two records share a ``record_id`` or an ``image_id`` (two parses
            concatenated): their detections would overwrite each other in the metric and merge
            ground truth in pycocotools, and the AP would be wrong without a word.
    """
    records = list(records)
    for k, r in enumerate(records):
        if not isinstance(r, Record):
            hint = (" parser.parse() returns one list per split ([train, valid]): pass one of them, e.g. "
                    "train_records, valid_records = parser.parse(); Dataset(train_records, tfms)."
                    if isinstance(r, (list, tuple)) else "")
            raise DataError(f"Dataset: element {k} of records is a {type(r).__name__}, expected a Record.{hint}")
    for attr in ("record_id", "image_id"):
        first: dict = {}
        dup = []
        for k, r in enumerate(records):
            key = getattr(r, attr)
            if key in first:
                dup.append((first[key], k))
            first.setdefault(key, k)
        if dup:
            a, b = dup[0]
            raise DataError(f"Dataset: records {a} and {b} ({records[a].filepath.name}, {records[b].filepath.name}) share "
                            f"{attr} {getattr(records[b], attr)!r} ({len(dup)} duplicate(s)); ids must be unique in a "
                            "dataset, or results of one image overwrite another's. Fix: parse all images in one parser "
                            "call, or give each source distinct ids before combining them.")
    return records


class Dataset:
    """Records plus a transform; item ``i`` is ``(uint8[S, S, 3] RGB image, target dict)``.

    The target dict holds ``boxes`` ``float32[N, 4]`` xyxy in network-input pixels, ``labels``
    ``int64[N]``, ``train_mask`` ``bool[N]`` (False for crowd regions), ``geometry``,
    ``record_id``, ``image_id`` (the source's id, see :class:`~fpn_lab.core.records.Record`) and
    ``class_map`` (the record's, for drawings; ``None`` for records not made by a parser).

    Args:
        records: parsed records.
        tfms: :func:`~fpn_lab.data.transforms.aug_tfms` (training) or
            :func:`~fpn_lab.data.transforms.resize_and_pad` (validation, inference).
        cache_images: keep decoded images in memory after first use (decode once; BCCD's 364
            images at 640x480 take about 335 MB).
    """

    def __init__(self, records: Sequence[Record], tfms: Augment | Letterbox, cache_images: bool = True):
        if not isinstance(tfms, (Augment, Letterbox)):
            raise DataError(f"tfms must come from aug_tfms(...) or resize_and_pad(...); got {type(tfms).__name__}.")
        self.records, self.tfms, self.cache_images = _check_records(records), tfms, cache_images
        self._cache: dict[int, np.ndarray] = {}
        _warn_sub_pixel_boxes(self.records, getattr(tfms, "letterbox", tfms))

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> np.ndarray:
        if i in self._cache:
            return self._cache[i]
        img = load_image(self.records[i].filepath)
        if img.shape[:2] != (self.records[i].height, self.records[i].width):
            raise DataError(f"{self.records[i].filepath}: decoded size {img.shape[:2]} differs from the parsed "
                            f"size {(self.records[i].height, self.records[i].width)}; re-parse the dataset.")
        if self.cache_images:
            self._cache[i] = img
        return img

    def __getitem__(self, i: int):
        r = self.records[i]
        img = self.image(i)
        if isinstance(self.tfms, Augment):
            keep = r.train_mask
            out, boxes, labels, g = self.tfms(img, r.boxes[keep], r.labels[keep])
            mask = np.ones(len(boxes), bool)
        else:
            out, boxes, g = self.tfms(img, r.boxes)
            labels, mask = r.labels, r.train_mask & ~too_small(boxes)  # validation loss as training sees boxes
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                  "train_mask": torch.from_numpy(mask), "geometry": g, "record_id": r.record_id,
                  "image_id": r.image_id, "class_map": r.class_map}
        return out, target


def collate(items) -> tuple[torch.Tensor, list[dict]]:
    """Stack images to ``uint8[B, 3, S, S]``; targets stay a list of dicts."""
    images = torch.from_numpy(np.stack([img for img, _ in items])).permute(0, 3, 1, 2).contiguous()
    return images, [t for _, t in items]


def _retain(res, b):
    return res


class DetectionDataLoader(DataLoader):
    """fastai's ``DataLoader`` with seeded augmentation.

    The shuffle order comes from the loader's own ``random.Random`` (fastai's ``rng``, seeded
    from ``seed`` or else from Python's ``random``). At the start of every epoch (``before_iter``,
    in the main process) the dataset's :class:`~fpn_lab.data.transforms.Augment` is re-seeded
    from that same generator, and in each worker process (``wif``) from torch's per-worker seed
    (itself drawn from torch's generator), so one seed gives the same augmented batches, epoch
    after epoch, whatever ran before (``show_samples``, ``lr_find``).

    Across processes (:class:`~fpn_lab.distributed.trainer.DistributedTrainer` calls
    :meth:`set_shard`) every process draws the same shuffled order from the same seed and keeps its
    own share; the augmentation seed then differs per rank, so the shares are not augmented alike.
    """

    _shard: tuple[int, int, bool] | None = None  # (rank, world size, pad)
    real: int | None = None  # images of this rank's share that are its own (not repeats): set_shard

    def set_shard(self, rank: int | None, world: int | None = None, *, pad: bool = False) -> None:
        """Iterate over rank ``rank``'s share of ``world`` (:func:`~fpn_lab.distributed.shard_indices`
        of each epoch's order); ``rank=None``: the whole dataset again.

        Every rank gets the same number of batches (DDP and the YOLOX / VFNet losses, which
        average over processes, need that): with ``pad`` (validation) each rank takes its own
        images (:attr:`real` of them), and a rank left one batch short gets a last batch of one
        repeated image, which the validation loss gives no weight
        (:class:`~fpn_lab.distributed.trainer.DistributedTrainer`) and the metric counts once;
        without, a dropping loader keeps
        :func:`~fpn_lab.distributed.common_steps` full batches per rank (each rank drops its last
        incomplete batch, as one process drops its own), a keeping one ``floor(n / world)`` images.

        Raises:
            ParamsError: fewer images than processes, or (dropping the last batch) fewer than one
                full batch per process.
        """
        from fpn_lab.distributed import common_steps, shard_indices
        from fpn_lab.errors import ParamsError

        full = len(self.dataset)
        if rank is None:
            self._shard, self.n, self.real = None, full, full
            return
        shard_indices(full, rank, world, empty_ok=pad)  # checks rank and world (and, training, an image per rank)
        self.real = len(range(rank, full, world))  # this rank's own images
        if pad:
            batches = -(-(-(-full // world)) // self.bs)  # the longest share's batches
            size = self.real + (-(-self.real // self.bs) < batches)  # one repeated image fills a missing batch
        elif self.drop_last:
            size = common_steps(full, world, self.bs) * self.bs
            if size == 0:
                raise ParamsError(f"{full} training images shared by {world} processes leave fewer than batch_size "
                                  f"{self.bs} per process, so no full batch; use fewer processes or a smaller "
                                  f"batch_size (at most {full // world}).")
        else:
            size = full // world
        self._shard, self.n = (rank, world, pad), size

    def get_idxs(self):
        if self._shard is None:
            return super().get_idxs()
        from fpn_lab.distributed import shard_indices

        rank, world, pad = self._shard
        order = list(range(len(self.dataset)))
        if self.shuffle:
            order = self.shuffle_fn(order)
        share = shard_indices(len(order), rank, world, order=order, empty_ok=pad)
        return (share + order[:1] * (self.n - len(share)))[: self.n]

    def before_iter(self):
        super().before_iter()
        tfms = getattr(self.dataset, "tfms", None)
        if isinstance(tfms, Augment):
            seed = self.rng.getrandbits(32)  # drawn alike in every rank: the shuffle orders stay in step
            tfms.reseed(self._per_rank(seed))

    def _per_rank(self, seed: int) -> int:
        """``seed`` made distinct per process of a process group (each rank augments its own way)."""
        rank = self._shard[0] if self._shard else 0
        return (seed + rank * 0x9E3779B1) % 2**32

    def wif(self):
        from torch.utils.data import get_worker_info

        tfms = getattr(self.dataset, "tfms", None)
        info = get_worker_info()
        if isinstance(tfms, Augment) and info is not None:
            # torch draws the workers' seeds from its global generator, seeded alike in every rank
            tfms.reseed(self._per_rank(info.seed))


def make_dataloader(dataset: Dataset, batch_size: int, *, shuffle: bool, drop_last: bool, num_workers: int = 0,
                    seed: int | None = None) -> DataLoader:
    """A :class:`DetectionDataLoader` over ``dataset`` with :func:`collate`; ``seed`` fixes its
    shuffle order and augmentation (default: drawn from Python's ``random``)."""
    dl = DetectionDataLoader(dataset, bs=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
                             create_batch=collate, retain=_retain, persistent_workers=num_workers > 0)
    if seed is not None:
        dl.rng = random.Random(seed)
    return dl


def make_dataloaders(train_ds: Dataset, valid_ds: Dataset, batch_size: int, *, num_workers: int = 0,
                     valid_batch_size: int | None = None, device: str | torch.device = "cpu",
                     seed: int | None = None) -> DataLoaders:
    """fastai ``DataLoaders``: training shuffles and drops the incomplete last batch (a batch of
    one image breaks BatchNorm); validation keeps every image. ``seed`` fixes the training
    loader's shuffle order and augmentation (see :class:`DetectionDataLoader`); without it they
    follow Python's ``random`` (seeded by ``set_seed``).

    Raises:
        DataError: ``batch_size`` larger than the training set, or not a positive int.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int; got {batch_size!r}.")
    if batch_size > len(train_ds):
        raise DataError(f"batch_size {batch_size} is larger than the training set ({len(train_ds)} images); "
                        f"with the last incomplete batch dropped no batch would be left. Use batch_size <= {len(train_ds)}.")
    train = make_dataloader(train_ds, batch_size, shuffle=True, drop_last=True, num_workers=num_workers, seed=seed)
    valid = make_dataloader(valid_ds, valid_batch_size or batch_size, shuffle=False, drop_last=False,
                            num_workers=num_workers)
    dls = DataLoaders(train, valid, device=torch.device(device))
    dls.n_inp = 1
    return dls
