"""Splitters: divide records into train / valid (/ test) lists.

Each splitter has ``split(records) -> list[list[Record]]``, one list per split, in the order the
splitter was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fpn_lab.core.records import Record
from fpn_lab.errors import DataError


class RandomSplitter:
    """Random split by probabilities, deterministic for a given ``seed``.

    Args:
        probs: fractions per split, summing to 1 (within 1e-6), e.g. ``[0.8, 0.2]``.
        seed: numpy ``default_rng`` seed; the same seed and records give the same split.
    """

    def __init__(self, probs: Sequence[float], seed: int = 42):
        probs = [float(p) for p in probs]
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise DataError(f"RandomSplitter probs must be non-negative and sum to 1; got {probs}.")
        self.probs, self.seed = probs, seed

    def split(self, records: Sequence[Record]) -> list[list[Record]]:
        order = np.random.default_rng(self.seed).permutation(len(records))
        bounds = np.round(np.cumsum(self.probs) * len(records)).astype(int)
        starts = np.concatenate([[0], bounds[:-1]])
        return [[records[i] for i in order[s:e]] for s, e in zip(starts, bounds)]


class SingleSplitSplitter:
    """All records in one split: ``parser.parse(SingleSplitSplitter())`` returns ``[records]`` (IceVision's name)."""

    def split(self, records: Sequence[Record]) -> list[list[Record]]:
        return [list(records)]


class FixedSplitter:
    """Split by explicit image ids (image file stems, e.g. ``BloodImage_00001``).

    Raises:
        DataError: an id names no record, or an id is in two splits.
    """

    def __init__(self, splits: Sequence[Sequence[str]], names: Sequence[str] | None = None):
        self.splits = [[str(s) for s in split] for split in splits]
        self.names = list(names) if names else [f"split {i}" for i in range(len(self.splits))]
        seen: dict[str, str] = {}
        for name, split in zip(self.names, self.splits):
            for key in split:
                if key in seen:
                    raise DataError(f"image id {key!r} is in both {seen[key]!r} and {name!r}.")
                seen[key] = name

    def split(self, records: Sequence[Record]) -> list[list[Record]]:
        by_key = {r.filepath.stem: r for r in records}
        out = []
        for name, split in zip(self.names, self.splits):
            missing = [k for k in split if k not in by_key]
            if missing:
                raise DataError(f"{len(missing)} ids of {name!r} name no parsed image (first: {missing[:3]}; ids are "
                                f"image file stems such as {next(iter(by_key), '?')!r}); they may have been skipped, "
                                "or the split file belongs to another dataset.")
            out.append([by_key[k] for k in split])
        return out


class VOCImageSetSplitter(FixedSplitter):
    """A dataset's published split: ``ImageSets/Main/<name>.txt`` files, one image id per line.

    Args:
        image_sets_dir: the ``ImageSets/Main`` folder.
        names: split names in order, e.g. ``["trainval", "test"]``.
    """

    def __init__(self, image_sets_dir: str | Path, names: Sequence[str] = ("trainval", "test")):
        image_sets_dir = Path(image_sets_dir)
        splits = []
        for name in names:
            path = image_sets_dir / f"{name}.txt"
            if not path.is_file():
                have = sorted(p.stem for p in image_sets_dir.glob("*.txt")) if image_sets_dir.is_dir() else []
                raise DataError(f"split file not found: {path}; available splits: {have or 'none'}.")
            splits.append([ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()])
        super().__init__(splits, names)
