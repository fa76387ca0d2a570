"""Class maps: an exact, case-sensitive mapping between class names and 0-based indices."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

from fpn_lab.errors import DataError

#: IceVision put a ``"background"`` class at index 0 of every class map; MMDetection 3 heads have none.
NO_BACKGROUND = ("fpn_lab's ClassMap has no background class (MMDetection 3 heads predict object classes "
                 "only): labels are 0-based object classes and num_classes = len(class_map). IceVision's "
                 "ClassMap put 'background' at index 0; leave it out of the class names.")


def normalize_name(name: str) -> str:
    """The one rule applied to every class name read from annotations: strip outer whitespace.

    Case and inner spaces are kept, so ``'Traffic Light'`` and ``'traffic_light'`` stay different
    from ``'traffic light'``; see :meth:`ClassMap.index` for how near matches are reported.
    """
    return str(name).strip()


def _fold(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


class ClassMap:
    """Ordered class names; index ``i`` is the label the model predicts (no background class).

    Each label also has the dataset's own category id, used wherever results leave fpn_lab
    (``predictions.json``, the COCO evaluation): a COCO file's ``category_id`` as written in it
    (ids may start at 0, have gaps and come in any order), and ``label + 1`` for sources without
    ids (Pascal VOC), as in COCO's convention of ids from 1.

    Args:
        names: class names in label order. Duplicates (after stripping outer whitespace) are an
            error; names that differ only by case, spaces or punctuation are an error too, since
            they almost always mean the same class written two ways.
        category_ids: the source's category id per label (ints, unique); default ``label + 1``.
        background: IceVision's argument (the name of a background class it put at index 0).
            Accepted for code moving from IceVision with a warning that there is no background
            class; ``None`` (default) is silent.

    Warns:
        UserWarning: ``background`` is given, or the first name is ``"background"`` (an IceVision
            class list): the class is kept as an ordinary object class, which is rarely wanted.
    """

    def __init__(self, names: Sequence[str], category_ids: Sequence[int] | None = None, *, background=None):
        names = [normalize_name(n) for n in names]
        if background is not None:
            warnings.warn(f"ClassMap(background={background!r}) is ignored. {NO_BACKGROUND}", stacklevel=2)
        elif names and names[0].casefold() == "background":
            warnings.warn(f"class 0 is named {names[0]!r} and will be trained as an object class. {NO_BACKGROUND}",
                          stacklevel=2)
        for i, name in enumerate(names):
            if not name:
                raise DataError(f"class name #{i} is empty; every class needs a non-empty name.")
            for j in range(i):
                if names[j] == name:
                    raise DataError(f"class name {name!r} appears twice (positions {j} and {i}) in {names}.")
                if _fold(names[j]) == _fold(name):
                    raise DataError(
                        f"class names {names[j]!r} and {name!r} differ only by case, spaces or punctuation; "
                        "merge them with an explicit `label_mapping={...}` or rename one in the annotations.")
        self._names = list(names)
        self._index = {n: i for i, n in enumerate(self._names)}
        ids = list(range(1, len(names) + 1)) if category_ids is None else list(category_ids)
        if len(ids) != len(names) or len(set(ids)) != len(ids) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DataError(f"category_ids must be one unique int per class ({len(names)} classes {names}); got {ids}.")
        self._category_ids = ids

    @classmethod
    def from_labels(cls, labels: Iterable[str], label_mapping: Mapping[str, str] | None = None) -> ClassMap:
        """Build a class map from the labels seen in a dataset, sorted by name for determinism."""
        mapping = {normalize_name(k): normalize_name(v) for k, v in (label_mapping or {}).items()}
        seen = sorted({mapping.get(normalize_name(x), normalize_name(x)) for x in labels})
        return cls(seen)

    def index(self, name: str, *, where: str = "") -> int:
        """0-based index of ``name`` (outer whitespace stripped, case-sensitive).

        Raises:
            DataError: the name is unknown; the message lists the nearest known classes.
        """
        key = normalize_name(name)
        if key in self._index:
            return self._index[key]
        near = [n for n in self._names if _fold(n) == _fold(key)]
        hint = (f" It differs from {near[0]!r} only by case, spaces or punctuation: fix the annotation "
                f"or pass label_mapping={{{key!r}: {near[0]!r}}}." if near else "")
        raise DataError(f"{where + ': ' if where else ''}unknown class {name!r}; the class map is {self._names}.{hint}")

    def name(self, index: int) -> str:
        return self._names[index]

    # IceVision's names for the same lookups (code moving from IceVision runs unchanged)
    def get_classes(self) -> list[str]:
        """IceVision's name for :attr:`names` (no background entry)."""
        return self.names

    def get_by_id(self, index: int) -> str:
        """IceVision's name for :meth:`name`."""
        return self.name(index)

    def get_by_name(self, name: str) -> int:
        """IceVision's name for :meth:`index`."""
        return self.index(name)

    @property
    def category_ids(self) -> list[int]:
        """The source dataset's category id of each label (``label + 1`` when the source has none)."""
        return list(self._category_ids)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self):
        return iter(self._names)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ClassMap) and self._names == other._names
                and self._category_ids == other._category_ids)

    def __repr__(self) -> str:
        default = self._category_ids == list(range(1, len(self._names) + 1))
        return f"ClassMap({self._names})" if default else f"ClassMap({self._names}, category_ids={self._category_ids})"
