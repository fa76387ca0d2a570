"""Open a dataset folder (Pascal VOC or COCO) and split it: one call for the notebooks.

:func:`find_layout` looks at file names only (no parsing), so it is cheap enough to run before a
kernel starts; :func:`open_dataset` then parses and splits, and returns a :class:`DatasetSplit`.

Layouts recognised (``data_dir`` is the folder given):

* **VOC**: ``annotations/`` (or ``Annotations/``) holding at least one ``*.xml``, images in
  ``images/`` (or ``JPEGImages/``); the published split is ``ImageSets/Main/trainval.txt`` ->
  ``ImageSets/Main/test.txt``.
* **COCO**: JSON files in ``data_dir`` or ``data_dir/annotations/``, recognised by name:
  ``annotations.json`` (the whole set, no published split), a training file (``train.json``,
  ``instances_train*.json``) and a validation file (``val.json``, ``valid.json``,
  ``instances_val*.json``). Images are in ``images/``, or in ``data_dir`` itself when there is
  no ``images/``; each ``file_name`` is relative to that folder (subfolders and absolute paths
  work). A file named ``instances_<name>.json`` or ``<name>.json`` whose first image is not in
  that folder but is in its ``<name>/`` subfolder reads its images from there (COCO 2017's
  ``train2017/``, ``val2017/``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fpn_lab.core.class_map import ClassMap, normalize_name
from fpn_lab.core.records import Record
from fpn_lab.data.parsers import COCOBBoxParser, ParseReport, VOCBBoxParser
from fpn_lab.data.splits import FixedSplitter, RandomSplitter, SingleSplitSplitter, VOCImageSetSplitter
from fpn_lab.errors import DataError

log = logging.getLogger("fpn_lab.data")

FORMATS = ("voc", "coco")
SPLITS = ("published", "random", "file")
RANDOM_FRACTIONS = (0.8, 0.2)
EXPECTED = ("Expected layouts: VOC = annotations/*.xml + images/ (published split: ImageSets/Main/trainval.txt "
            "and test.txt); COCO = annotations.json (the whole set), or train.json + val.json (also "
            "instances_train*.json + instances_val*.json), in the folder or its annotations/ subfolder, beside "
            "images/ (or with the images in the folder itself).")


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files are, as :func:`find_layout` found them (nothing parsed yet).

    Attributes:
        data_format: ``"voc"`` or ``"coco"``.
        split: ``"published"``, ``"random"`` or ``"file"``.
        images: the images folder.
        sources: what each part comes from. ``"annotations"``: the one source that is parsed and
            split (VOC: the XML folder; COCO: the json); ``"train"`` / ``"valid"``: COCO: the json
            file of that split; VOC: the file of image ids of that split.
        notes: files found but not used, said once when the dataset opens.
    """

    data_format: str
    split: str
    images: Path
    sources: dict[str, Path]
    notes: tuple[str, ...] = ()


def check_choices(data_format: str, split: str, valid_annotations) -> None:
    """Check ``data_format``, ``split`` and ``valid_annotations`` against each other (no file is read).

    Raises:
        DataError: an unknown format or split, split ``file`` without ``valid_annotations``, or
            ``valid_annotations`` with another split.
    """
    if data_format not in ("", *FORMATS):
        raise DataError(f"data_format: {data_format!r} is not one of {['', *FORMATS]} ('' detects it from data_dir).")
    if split not in SPLITS:
        raise DataError(f"split: {split!r} is not one of {list(SPLITS)}.")
    if split == "file" and not valid_annotations:
        raise DataError("split: 'file' needs valid_annotations (a COCO json of the validation images, or for VOC a "
                        "text file of image ids, one per line).")
    if valid_annotations and split != "file":
        raise DataError(f"valid_annotations: {str(valid_annotations)!r} is only read with split 'file' (split is "
                        f"{split!r}); add split: file, or drop valid_annotations.")


def _voc_annotations(data_dir: Path) -> Path | None:
    for name in ("annotations", "Annotations"):
        folder = data_dir / name
        if folder.is_dir() and next(folder.glob("*.xml"), None) is not None:
            return folder
    return None


def _coco_role(path: Path) -> str | None:
    stem = path.stem
    if path.name == "annotations.json":
        return "whole"
    if stem == "train" or stem.startswith("instances_train"):
        return "train"
    if stem in ("val", "valid") or stem.startswith("instances_val"):
        return "valid"
    return None


def _coco_files(data_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Recognised COCO json files by role (``whole``, ``train``, ``valid``), and the other json files."""
    found: dict[str, list[Path]] = {"whole": [], "train": [], "valid": []}
    other = []
    for folder in (data_dir, data_dir / "annotations"):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            role = _coco_role(path)
            (found[role] if role else other).append(path)
    return found, other


def _rel(path: Path, data_dir: Path) -> str:
    try:
        return str(path.relative_to(data_dir))
    except ValueError:
        return str(path)


def _what_is_there(data_dir: Path, other_json: list[Path]) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in data_dir.iterdir())
    shown = ", ".join(entries[:12]) + (f" (+{len(entries) - 12} more)" if len(entries) > 12 else "")
    text = f"{data_dir} holds: {shown or 'nothing'}"
    if other_json:
        text += (f"; json files with names that are not recognised: {[_rel(p, data_dir) for p in other_json]} "
                 "(rename the whole set to annotations.json, or the parts to train.json and val.json)")
    return text


def _detect(data_dir: Path, data_format: str) -> str:
    voc = _voc_annotations(data_dir)
    coco, other = _coco_files(data_dir)
    coco_found = [_rel(p, data_dir) for paths in coco.values() for p in paths]
    if data_format == "voc" and voc or data_format == "coco" and coco_found:
        return data_format
    if not data_format and voc and coco_found:
        raise DataError(f"{data_dir}: both Pascal VOC annotations ({_rel(voc, data_dir)}/*.xml) and COCO files "
                        f"{coco_found} were found; set data_format='voc' or 'coco' to say which to read.")
    if not data_format and (voc or coco_found):
        return "voc" if voc else "coco"
    looked = {"voc": "no annotations/ folder with *.xml files", "coco": "no recognised COCO json file",
              "": "neither VOC nor COCO annotations"}[data_format]
    raise DataError(f"{data_dir}: {looked}. {_what_is_there(data_dir, other)}. {EXPECTED}")


def _one(paths: list[Path], what: str, data_dir: Path) -> Path | None:
    if len(paths) > 1:
        raise DataError(f"{data_dir}: {len(paths)} {what} files {[_rel(p, data_dir) for p in paths]}; keep one "
                        "(move the others out of the folder).")
    return paths[0] if paths else None


def _voc_layout(data_dir: Path, split: str, valid_annotations: Path | None) -> Layout:
    images = next((data_dir / n for n in ("images", "JPEGImages") if (data_dir / n).is_dir()), None)
    if images is None:
        raise DataError(f"{data_dir}: VOC annotations found but no images/ (or JPEGImages/) folder. {EXPECTED}")
    sources = {"annotations": _voc_annotations(data_dir)}
    if split == "published":
        sets = data_dir / "ImageSets" / "Main"
        if not all((sets / f"{n}.txt").is_file() for n in ("trainval", "test")):
            have = sorted(p.name for p in sets.glob("*.txt")) if sets.is_dir() else []
            raise DataError(f"{data_dir}: no published split (ImageSets/Main/trainval.txt and test.txt; found "
                            f"{have or 'none'}). Use split='random' ({RANDOM_FRACTIONS[0]:.0%}/"
                            f"{RANDOM_FRACTIONS[1]:.0%} with seed) or split='file' with valid_annotations=<a text "
                            "file of validation image ids>.")
        sources.update(train=sets / "trainval.txt", valid=sets / "test.txt")
    elif split == "file":
        if valid_annotations.suffix.lower() == ".json":
            raise DataError(f"valid_annotations {valid_annotations} is a json file, but {data_dir} is a VOC dataset: "
                            "give a text file of validation image ids (file stems), one per line, as ImageSets/Main.")
        sources["valid"] = valid_annotations
    return Layout("voc", split, images, sources)


def _coco_layout(data_dir: Path, split: str, valid_annotations: Path | None) -> Layout:
    found, _ = _coco_files(data_dir)
    whole = _one(found["whole"], "annotations.json", data_dir)
    train = _one(found["train"], "training (train.json / instances_train*.json)", data_dir)
    valid = _one(found["valid"], "validation (val.json / instances_val*.json)", data_dir)
    images = data_dir / "images" if (data_dir / "images").is_dir() else data_dir
    if whole and train:
        raise DataError(f"{data_dir}: both {_rel(whole, data_dir)} and {_rel(train, data_dir)} are there; which one "
                        "trains is ambiguous. Move one out of the folder.")
    if not (train or whole):
        raise DataError(f"{data_dir}: found the validation file {_rel(valid, data_dir)} but no training file "
                        f"(annotations.json, train.json or instances_train*.json). {EXPECTED}")
    if split == "published":
        if not (train and valid):
            what = (f"{_rel(whole, data_dir)} (the whole set)" if whole
                    else f"{_rel(train, data_dir)} with no validation file")
            hint = (f"valid_annotations={str(valid)!r}" if valid
                    else "valid_annotations=<a COCO json of the validation images>")
            raise DataError(f"{data_dir}: found {what}: no published split, which needs a training and a validation "
                            f"file (train.json + val.json, or instances_train*.json + instances_val*.json). Use "
                            f"split='random' or split='file' with {hint}.")
        return Layout("coco", split, images, {"train": train, "valid": valid})
    train = train or whole
    if split == "file":
        if valid_annotations.suffix.lower() != ".json":
            raise DataError(f"valid_annotations {valid_annotations} is not a .json file, but {data_dir} is a COCO "
                            "dataset: give a COCO json of the validation images.")
        if valid_annotations.resolve() == train.resolve():
            raise DataError(f"valid_annotations {valid_annotations} is the training file itself; give the json of "
                            "the validation images only.")
        notes = (f"{_rel(valid, data_dir)} is not used: valid_annotations gives the validation set",) if valid else ()
        return Layout("coco", split, images, {"train": train, "valid": valid_annotations}, notes)
    notes = (f"{_rel(valid, data_dir)} is not used: split='random' splits {_rel(train, data_dir)}",) if valid else ()
    return Layout("coco", split, images, {"annotations": train}, notes)


def find_layout(data_dir: str | Path, *, data_format: str = "", split: str = "published",
                valid_annotations: str | Path = "") -> Layout:
    """Find a dataset's format, annotation files, images folder and split sources, by file names only.

    Rules (the module docstring lists the layouts):

    1. ``data_format=""`` detects: VOC when ``annotations/`` (or ``Annotations/``) holds a
       ``*.xml``; COCO when a recognised json file is there; both found is ambiguous (an error:
       set ``data_format``), none found is an error listing what the folder holds.
    2. COCO: at most one file per role (``annotations.json``; ``train.json`` /
       ``instances_train*.json``; ``val.json`` / ``valid.json`` / ``instances_val*.json``) over
       ``data_dir`` and ``data_dir/annotations``; ``annotations.json`` and a training file
       together are ambiguous. The training file, else ``annotations.json``, is what trains.
    3. ``split="published"``: VOC ``ImageSets/Main/trainval.txt`` -> ``test.txt``; COCO the
       training file -> the validation file (``annotations.json`` is the whole set: it has no
       published split, even beside a validation file).
       ``"random"``: the training source, 80/20 (a COCO validation file found is not used, and
       a note says so). ``"file"``: ``valid_annotations`` gives the validation set (COCO: a json
       file, replacing a validation file found; VOC: a text file of image ids) and the rest of the
       training source trains (its images that are in the validation set are taken out).

    Args:
        data_dir: the dataset folder (relative paths resolve against the working directory:
            the notebook passes ``project_path(data_dir)``).
        data_format: ``"voc"``, ``"coco"``, or ``""`` to detect it.
        split: ``"published"``, ``"random"`` or ``"file"``.
        valid_annotations: with ``split="file"`` only (see above).

    Raises:
        DataError: a bad choice, a missing folder or file, an ambiguous or unrecognised layout, or a
            split the dataset does not have; the message says what was found and how to fix it.
    """
    check_choices(data_format, split, valid_annotations)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} is not a folder.")
    valid_path = Path(valid_annotations) if valid_annotations else None
    if valid_path is not None and not valid_path.is_file():
        raise DataError(f"valid_annotations {valid_path} is not a file.")
    fmt = _detect(data_dir, data_format)
    return (_voc_layout if fmt == "voc" else _coco_layout)(data_dir, split, valid_path)


@dataclass(frozen=True, repr=False)
class DatasetSplit:
    """A parsed, split dataset: what :func:`open_dataset` returns.

    Attributes:
        train, valid: the records of each split (:class:`~fpn_lab.core.records.Record`).
        class_map: labels, names and the source's category ids (shared by both splits).
        data_format: ``"voc"`` or ``"coco"``.
        split: ``"published"``, ``"random"`` or ``"file"``.
        data_dir: the dataset folder.
        sources: what each part came from (see :class:`Layout`).
        reports: one :class:`~fpn_lab.data.parsers.ParseReport` per parsed source:
            ``{"annotations": ...}`` when one source was split, ``{"train": ..., "valid": ...}``
            for two COCO files.
        seed: the random split's seed (``None`` for the other splits).
        notes: files found but not used.
    """

    train: list[Record]
    valid: list[Record]
    class_map: ClassMap
    data_format: str
    split: str
    data_dir: Path
    sources: dict[str, Path]
    reports: dict[str, ParseReport]
    seed: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def report(self) -> ParseReport:
        """All parse reports summed into one (the report itself when there is one source)."""
        if len(self.reports) == 1:
            return next(iter(self.reports.values()))
        merged = ParseReport(dropped=Counter())
        for role, rep in self.reports.items():
            for name in ("images", "negatives", "boxes", "clipped", "skipped_images", "size_fixed", "crowd",
                         "difficult"):
                setattr(merged, name, getattr(merged, name) + getattr(rep, name))
            merged.dropped.update(rep.dropped)
            merged.events.extend(f"{role}: {e}" for e in rep.events)
        return merged

    def as_dict(self, path: Callable[[Path], str] | None = None) -> dict:
        """The ``dataset`` section of ``metrics.json``.

        Args:
            path: writes a path (the notebook passes ``display_path``); default: ``data_dir`` as
                given, sources relative to it when inside it.

        Returns:
            ``data_dir``, ``format``, ``class_names``, ``category_ids``, ``split`` (``name``,
            ``train`` and ``valid`` image counts), ``sources`` (role -> path, see
            :class:`Layout`), ``parse`` (the summed :meth:`ParseReport.as_dict`) and, with two
            sources, ``parse_by_source`` (``train``, ``valid``).
        """
        data_dir = path(self.data_dir) if path else str(self.data_dir)
        path = path or (lambda p: _rel(Path(p), self.data_dir))
        out = {"data_dir": data_dir, "format": self.data_format, "class_names": self.class_map.names,
               "category_ids": self.class_map.category_ids,
               "split": {"name": self.split, "train": len(self.train), "valid": len(self.valid)},
               "sources": {role: path(p) for role, p in self.sources.items()}, "parse": self.report.as_dict()}
        if len(self.reports) > 1:
            out["parse_by_source"] = {role: rep.as_dict() for role, rep in self.reports.items()}
        return out

    def __str__(self) -> str:
        return self.summary()

    def summary(self, path: Callable[[Path], str] | None = None) -> str:
        """What was read: format, folder, split and sources, the parse report(s), classes and sizes.

        Args:
            path: writes ``data_dir`` (the notebook passes ``display_path``, so reports carry no
                machine paths); default: as given.
        """
        how = f"{self.split} split" + (f" (seed {self.seed})" if self.seed is not None else "")
        lines = [f"{self.data_format.upper()} dataset {path(self.data_dir) if path else self.data_dir}, {how}; "
                 + ", ".join(f"{role}: {_rel(p, self.data_dir)}" for role, p in self.sources.items())]
        lines += [f"{role}: {rep}" if len(self.reports) > 1 else str(rep) for role, rep in self.reports.items()]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"classes: {self.class_map.names}; train {len(self.train)} images, valid {len(self.valid)} images")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"DatasetSplit({self.data_format}, {self.split}, train={len(self.train)}, valid={len(self.valid)}, "
                f"classes={self.class_map.names})")


def _read_ids(path: Path) -> list[str]:
    """Image ids (file stems), one per line as in ``ImageSets/Main``: the first word of each
    non-blank line not starting with ``#``; an id listed twice counts once."""
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not ids:
        raise DataError(f"valid_annotations {path} lists no image id; write one validation image id (file stem) "
                        "per line.")
    return list(dict.fromkeys(ids))


def _open_voc(layout: Layout, seed: int, strict: bool):
    parser = VOCBBoxParser(layout.sources["annotations"], layout.images, strict=strict)
    if layout.split == "published":
        parts = parser.parse(VOCImageSetSplitter(layout.sources["train"].parent, ["trainval", "test"]))
    elif layout.split == "random":
        parts = parser.parse(RandomSplitter(list(RANDOM_FRACTIONS), seed=seed))
    else:
        (records,) = parser.parse(SingleSplitSplitter())
        valid_ids = _read_ids(layout.sources["valid"])
        train_ids = [r.filepath.stem for r in records if r.filepath.stem not in set(valid_ids)]
        parts = FixedSplitter([train_ids, valid_ids], ["train", layout.sources["valid"].name]).split(records)
    return parts[0], parts[1], parser.class_map, {"annotations": parser.report}


def _coco_parser(json_path: Path, images: Path, **kwargs) -> COCOBBoxParser:
    """A COCO parser reading images from ``images``, or from its ``<name>/`` subfolder (module docstring)."""
    parser = COCOBBoxParser(json_path, images, **kwargs)
    sub = images / json_path.stem.removeprefix("instances_")
    first = next((im["file_name"] for im in parser.data["images"] if isinstance(im, dict) and im.get("file_name")),
                 None)
    if first and sub.is_dir() and not (images / first).exists() and (sub / first).exists():
        parser.images_dir = sub
    return parser


def _check_same_categories(train: COCOBBoxParser, valid: COCOBBoxParser) -> None:
    """Both files must name the same categories with the same ids (results carry one id per class)."""
    theirs = {}
    for c in valid.data.get("categories") or []:
        if isinstance(c, dict) and "name" in c and "id" in c:
            theirs[normalize_name(c["name"])] = c["id"]
    ours = dict(zip(train.class_map.names, train.class_map.category_ids))
    if theirs == ours:
        return
    problems = []
    if [n for n in ours if n not in theirs]:
        problems.append(f"missing {[n for n in ours if n not in theirs]}")
    if [n for n in theirs if n not in ours]:
        problems.append(f"extra {[n for n in theirs if n not in ours]}")
    problems += [f"{n!r} has id {theirs[n]!r} there but {i!r} in training" for n, i in ours.items()
                 if n in theirs and theirs[n] != i]
    raise DataError(f"the categories of {valid.annotations_file} differ from those of {train.annotations_file}: "
                    f"{'; '.join(problems)}. Both files must list the same categories with the same ids (even classes "
                    "without boxes in one of them), so labels and the category ids in results agree.")


def _open_coco(layout: Layout, seed: int, strict: bool):
    if layout.split == "random":
        parser = _coco_parser(layout.sources["annotations"], layout.images, strict=strict)
        train, valid = parser.parse(RandomSplitter(list(RANDOM_FRACTIONS), seed=seed))
        return train, valid, parser.class_map, {"annotations": parser.report}
    tp = _coco_parser(layout.sources["train"], layout.images, strict=strict)
    (train,) = tp.parse(SingleSplitSplitter())
    vp = _coco_parser(layout.sources["valid"], layout.images, class_map=tp.class_map, strict=strict)
    _check_same_categories(tp, vp)
    (valid,) = vp.parse(SingleSplitSplitter())  # same names and ids as tp.class_map: _check_same_categories passed
    if layout.split == "file":  # the validation images are taken out of the training source: the rest trains
        held_out = {r.filepath.resolve() for r in valid}
        kept = [r for r in train if r.filepath.resolve() not in held_out]
        if len(kept) < len(train):
            log.info("%d images of %s are validation images (%s): not trained on", len(train) - len(kept),
                     layout.sources["train"].name, layout.sources["valid"].name)
        train = kept
    _check_disjoint(train, valid, layout)
    return train, valid, tp.class_map, {"train": tp.report, "valid": vp.report}


def _check_disjoint(train: list[Record], valid: list[Record], layout: Layout) -> None:
    both = sorted({r.filepath.resolve() for r in train} & {r.filepath.resolve() for r in valid})
    if both:
        raise DataError(f"{len(both)} images are both in {layout.sources['train'].name} and in "
                        f"{layout.sources['valid'].name} (first: {[p.name for p in both[:3]]}); validating on "
                        "training images inflates the scores. Remove them from one of the files.")


def open_dataset(data_dir: str | Path, *, data_format: str = "", split: str = "published",
                 valid_annotations: str | Path = "", seed: int = 42, strict: bool = True) -> DatasetSplit:
    """Parse a VOC or COCO dataset folder and split it into train and valid records.

    The format, files and split sources follow :func:`find_layout`'s rules. With two COCO files
    the validation file is parsed with the training file's class map, after checking that both
    list the same categories with the same ids; no image may be in both.

    Args:
        data_dir: the dataset folder (the notebook passes ``project_path(data_dir)``).
        data_format: ``"voc"``, ``"coco"``, or ``""`` to detect it.
        split: ``"published"``, ``"random"`` (80/20, :class:`RandomSplitter` with ``seed``) or
            ``"file"`` (``valid_annotations``).
        valid_annotations: split ``"file"`` only: a COCO json of the validation images, or for
            VOC a text file of validation image ids (file stems, one per line); the rest trains.
            Relative paths resolve against the working directory.
        seed: the random split's seed (the same seed and data give the same split).
        strict: passed to the parsers (a missing or undecodable image is an error, or skipped).

    Returns:
        A :class:`DatasetSplit`; ``as_dict()`` is the ``dataset`` section of ``metrics.json``.

    Raises:
        DataError: a layout problem (see :func:`find_layout`), a parse error, classes or ids of two
            COCO files that disagree, an image in both splits or an empty split (two images with one
            id are the parser's error).
    """
    layout = find_layout(data_dir, data_format=data_format, split=split, valid_annotations=valid_annotations)
    opener = _open_voc if layout.data_format == "voc" else _open_coco
    train, valid, class_map, reports = opener(layout, seed, strict)
    for name, records in (("training", train), ("validation", valid)):
        if not records:
            raise DataError(f"the {name} split of {data_dir} is empty ({layout.split} split, {len(train) + len(valid)} "
                            "images in all); it needs at least one image.")
    if not any(r.train_mask.any() for r in train):
        raise DataError(f"the training split of {data_dir} ({len(train)} images) has no box to train on (none at all, "
                        "or only crowd regions): check that the annotations belong to these images.")
    for note in layout.notes:  # informational: the summary prints them
        log.info("%s", note)
    return DatasetSplit(train, valid, class_map, layout.data_format, layout.split, Path(data_dir), layout.sources,
                        reports, seed if layout.split == "random" else None, layout.notes)


def check_data_params(params: dict, resolve=Path) -> None:
    """A notebook run's data parameters, before anything is read: ``image_size`` (a multiple of 32:
    :class:`~fpn_lab.data.transforms.Letterbox`), ``data_dir`` (an existing folder), ``data_format``,
    ``split`` and ``valid_annotations`` (:func:`check_choices`; an absent ``split`` is the notebooks'
    default ``"published"``), and whether ``data_dir``'s files fit them (:func:`find_layout`: file
    names only, nothing parsed). Absent keys are not checked.

    Args:
        resolve: maps a path parameter to the path to look at (the runner's ``project_path``:
            relative paths against the project root).

    Raises:
        ParamsError: the first value that would fail in the notebook's data cells, named by its key.
    """
    from fpn_lab.data.transforms import Letterbox
    from fpn_lab.errors import FpnLabError, ParamsError

    if isinstance(params.get("image_size"), int):
        try:
            Letterbox(params["image_size"])
        except FpnLabError as e:
            raise ParamsError(str(e)) from None
    for key in ("data_dir", "data_format", "split"):
        if key in params and params[key] is None or key == "data_dir" and params.get(key, "x") == "":
            raise ParamsError(f"{key}: got {params[key]!r}; it needs a value (data_dir: the dataset folder; data_format: "
                              "'voc', 'coco' or '' to detect; split: 'published', 'random' or 'file').")
    data_dir = params.get("data_dir")
    if isinstance(data_dir, str) and data_dir and not resolve(data_dir).is_dir():
        raise ParamsError(f"data_dir: {data_dir!r} is not a folder (looked in {resolve(data_dir)}); relative "
                          "paths are resolved against the project root.")
    fmt, split = params.get("data_format") or "", params.get("split", "published")
    valid = params.get("valid_annotations")
    try:
        check_choices(fmt, split, valid)
    except FpnLabError as e:
        raise ParamsError(str(e)) from None
    if valid and not resolve(valid).is_file():
        raise ParamsError(f"valid_annotations: {valid!r} is not a file (looked in {resolve(valid)}); relative "
                          "paths are resolved against the project root.")
    if isinstance(data_dir, str) and data_dir:
        try:
            find_layout(resolve(data_dir), data_format=fmt, split=split, valid_annotations=resolve(valid) if valid else "")
        except FpnLabError as e:
            raise ParamsError(f"data_dir: {e}") from None
