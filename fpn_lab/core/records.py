"""Detection records: one image and its boxes, in a single documented convention."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Record:
    """One image with its ground-truth boxes.

    Attributes:
        record_id: int, unique within a dataset (stable: COCO image id when numeric, else the
            position in the parsed annotation order).
        filepath: path of the image file.
        height, width: size in pixels of the upright image (after EXIF orientation).
        boxes: ``float32[N, 4]`` xyxy in absolute pixels of the upright image, with
            ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``.
        labels: ``int64[N]`` 0-based class indices into the dataset's :class:`ClassMap`
            (no background class).
        iscrowd: ``bool[N]``; crowd regions are ignored in training and evaluated with
            pycocotools' crowd rule.
        difficult: ``bool[N]``; VOC ``difficult`` objects, kept for training and ignored in
            evaluation (treated like COCO crowd regions: matching them is neither a TP nor a FP).
        source: the annotation file this record came from (for error messages).
        class_map: the dataset's :class:`~fpn_lab.core.class_map.ClassMap` (set by the parsers; shared by
            every record of a parse, so drawings can name labels), or ``None``.
        image_id: the image's id in the source dataset, as written there (a COCO ``id``: int or
            string); defaults to ``record_id`` (VOC: the position of its XML file in name order).
            Results (``predictions.json``, the COCO evaluation) use it.
    """

    record_id: int
    filepath: Path
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    source: str = ""
    image_id: int | str | None = None
    class_map: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.filepath = Path(self.filepath)
        if self.image_id is None:
            self.image_id = int(self.record_id)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, np.int64).reshape(n)
        self.iscrowd = np.zeros(n, bool) if len(self.iscrowd) == 0 and n else np.asarray(self.iscrowd, bool).reshape(n)
        self.difficult = np.zeros(n, bool) if len(self.difficult) == 0 and n else np.asarray(self.difficult, bool).reshape(n)

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    @property
    def train_mask(self) -> np.ndarray:
        """``bool[N]``: boxes the detector is trained on (everything but crowd regions)."""
        return ~self.iscrowd

    def __repr__(self) -> str:
        return (f"Record(id={self.record_id}, file={self.filepath.name!r}, size=({self.height}, {self.width}), "
                f"boxes={self.num_boxes})")
