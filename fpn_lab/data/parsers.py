"""Annotation parsers: Pascal VOC folders and COCO JSON files to :class:`~fpn_lab.core.records.Record` lists.

Both parsers apply the same box rules (:func:`sanitize_boxes`) and produce a :class:`ParseReport`
that counts what was kept, clipped and dropped, and why. Boxes are never silently swapped or
invented; every dropped or clipped box is logged with its file, object and coordinates.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fpn_lab.core.class_map import ClassMap, normalize_name
from fpn_lab.core.records import Record
from fpn_lab.data.images import check_image
from fpn_lab.errors import DataError

log = logging.getLogger("fpn_lab.data")

#: Individually logged problems per parse; the rest are counted in the report only.
MAX_LOGGED = 50
#: ``parse()``'s split without a splitter: IceVision's proportions, ``RandomSplitter([0.8, 0.2])`` (seeded; each
#: split's size is rounded from its share, so with a handful of images IceVision's sizes may differ by one).
DEFAULT_SPLIT = (0.8, 0.2)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class ParseReport:
    """What a parser kept and dropped.

    Attributes:
        images: records returned (including negatives).
        negatives: records with no box (kept: they train as background).
        boxes: boxes kept.
        clipped: boxes partly outside the image, clipped to it.
        dropped: count per reason (``zero-area``, ``inverted``, ``outside``, ``non-finite``,
            ``no-box``; COCO with ``strict=False``: ``unknown-image``, annotations whose
            ``image_id`` is no id in ``images``).
        skipped_images: images skipped with ``strict=False`` (missing, or not decodable to the last
            pixel: truncated or corrupt files are found at parse time).
        size_fixed: VOC files whose ``<size>`` was missing or wrong (the real size is used).
        events: one human-readable line per dropped/clipped box or skipped image.
    """

    images: int = 0
    negatives: int = 0
    boxes: int = 0
    clipped: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped_images: int = 0
    size_fixed: int = 0
    crowd: int = 0
    difficult: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.events) < MAX_LOGGED:
            log.warning(message)
        elif len(self.events) == MAX_LOGGED:
            log.warning("more parse problems follow; see ParseReport.events for all of them")
        self.events.append(message)

    @property
    def dropped_boxes(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict:
        return {"images": self.images, "negatives": self.negatives, "boxes": self.boxes,
                "clipped": self.clipped, "dropped": dict(self.dropped), "dropped_total": self.dropped_boxes,
                "skipped_images": self.skipped_images, "size_fixed": self.size_fixed,
                "crowd": self.crowd, "difficult": self.difficult}

    def __str__(self) -> str:
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"parsed {self.images} images ({self.negatives} without boxes), {self.boxes} boxes kept, "
                f"{self.clipped} clipped, dropped {self.dropped_boxes} ({drops}), "
                f"{self.skipped_images} images skipped, {self.size_fixed} sizes fixed")


def sanitize_box(box: Sequence[float], height: int, width: int) -> tuple[np.ndarray | None, str]:
    """Check one xyxy box against an image of ``height`` x ``width`` pixels.

    Returns ``(box, status)`` where status is ``"ok"``, ``"clipped"`` (partly outside, clipped to
    the image) or a drop reason with ``box=None``: ``"non-finite"``, ``"inverted"`` (x2 < x1 or
    y2 < y1; never swapped), ``"zero-area"`` (x2 == x1 or y2 == y1) or ``"outside"`` (no overlap
    with the image).
    """
    b = np.asarray(box, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        return None, "non-finite"
    x1, y1, x2, y2 = b
    if x2 < x1 or y2 < y1:
        return None, "inverted"
    if x2 == x1 or y2 == y1:
        return None, "zero-area"
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return None, "outside"
    clipped = np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)])
    status = "clipped" if not np.array_equal(clipped, b) else "ok"
    return clipped.astype(np.float32), status


class _Parser:
    """Shared logic: box rules, the report, class-map handling and splitting."""

    def __init__(self, images_dir: str | Path, *, class_map: ClassMap | Sequence[str] | None = None,
                 label_mapping: Mapping[str, str] | None = None, strict: bool = True):
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataError(f"images directory not found: {self.images_dir}. Pass the folder that holds the images.")
        self.class_map = class_map if isinstance(class_map, ClassMap) or class_map is None else ClassMap(class_map)
        self.label_mapping = {normalize_name(k): normalize_name(v) for k, v in (label_mapping or {}).items()}
        self.strict = strict
        self.report = ParseReport()

    def _label(self, name: str) -> str:
        name = normalize_name(name)
        return self.label_mapping.get(name, name)

    def _keep_box(self, box, height, width, where: str) -> np.ndarray | None:
        kept, status = sanitize_box(box, height, width)
        if kept is None:
            self.report.dropped[status] += 1
            self.report.note(f"{where}: dropped {status} box {[float(v) for v in box]} (image {width}x{height})")
        elif status == "clipped":
            self.report.clipped += 1
            self.report.note(f"{where}: clipped box {[float(v) for v in box]} to {kept.tolist()} (image {width}x{height})")
        return kept

    def _image_size(self, path: Path, where: str) -> tuple[int, int] | None:
        # decodes every pixel (check_image), so a truncated or corrupt file is found here, not mid-epoch
        try:
            return check_image(path)
        except DataError as e:
            if self.strict:
                raise DataError(f"{where}: {e} (pass strict=False to skip such images and count them)") from None
            self.report.skipped_images += 1
            self.report.note(f"{where}: skipped image: {e}")
            return None

    def _finish(self, records: list[Record]) -> list[Record]:
        rep = self.report
        rep.images = len(records)
        rep.negatives = sum(r.num_boxes == 0 for r in records)
        rep.boxes = sum(r.num_boxes for r in records)
        rep.crowd = int(sum(r.iscrowd.sum() for r in records))
        rep.difficult = int(sum(r.difficult.sum() for r in records))
        if not records:
            raise DataError(f"no usable image in {self.images_dir}: {rep}. Check the annotation and image paths.")
        log.info("%s", rep)
        return records

    def parse(self, data_splitter=None, autofix: bool = True):
        """Parse the annotations and split the records, as IceVision's ``parser.parse``.

        Args:
            data_splitter: a splitter (:mod:`fpn_lab.data.splits`); default
                ``RandomSplitter([0.8, 0.2])`` (seed 42), IceVision's default split.
                ``SingleSplitSplitter()`` gives every record in one list.
            autofix: IceVision's switch; fpn_lab always applies its box rules (clip to the image,
                drop empty boxes, each counted and logged in :attr:`report`), which is ``True``.

        Returns:
            One ``list[Record]`` per split: ``train_records, valid_records = parser.parse()``.
            Every record's ``class_map`` is :attr:`class_map`.

        Raises:
            DataError: ``autofix`` other than True, unreadable annotations, an unknown or ambiguous
                class name, a missing or undecodable (truncated, corrupt) image or a COCO annotation naming an image id
                absent from ``images`` (both with ``strict=True``), or no usable image at all.
        """
        from fpn_lab.data.splits import RandomSplitter

        if autofix is not True:
            raise DataError(f"parse(autofix={autofix!r}): fpn_lab always clips boxes to the image and drops empty "
                            "ones, counting each in parser.report (IceVision's autofix=True); check parser.report after "
                            "parse() instead of turning it off.")
        records = self._finish(self._parse())
        for r in records:
            r.class_map = self.class_map
        return (data_splitter or RandomSplitter(DEFAULT_SPLIT)).split(records)

    def _parse(self) -> list[Record]:  # pragma: no cover - abstract
        raise NotImplementedError


class VOCBBoxParser(_Parser):
    """Pascal VOC: one XML file per image in ``annotations_dir``, images in ``images_dir``.

    * Coordinates are read as floats (``10.5`` and ``5.70000076293945`` are kept as given); no
      rounding and no VOC 1-based shift is applied: boxes are used exactly as written.
    * ``<size>`` is checked against the real (EXIF-upright) image size; a missing or wrong size is
      replaced by the real one and counted in ``report.size_fixed``.
    * ``difficult``, ``truncated`` and ``pose`` are optional. ``difficult=1`` objects are kept
      and marked (:attr:`Record.difficult`); COCO evaluation ignores them like crowd regions.
    * Class names: outer whitespace stripped, case kept (see :class:`ClassMap`).
    * Ids written to results: ``image_id`` = ``record_id`` = the position of the XML file among
      the folder's ``*.xml`` files sorted by name (0-based, stable when images are skipped);
      ``category_id`` = label + 1. A run writes the matching COCO ground truth
      (``ground_truth.json``) beside its ``predictions.json``.

    Args:
        annotations_dir: folder of ``*.xml`` files.
        images_dir: folder of the images named by ``<filename>`` (or the XML's stem).
        class_map: fixed class names in label order; default: all names seen, sorted.
        label_mapping: explicit renames applied before the class map (``{"Traffic Light": "traffic light"}``).
        strict: a missing or undecodable image (every pixel is decoded, so a truncated file is
            found here) is an error (True) or skipped and counted in ``report.skipped_images`` (False).
    """

    def __init__(self, annotations_dir: str | Path, images_dir: str | Path, *,
                 class_map: ClassMap | Sequence[str] | None = None, label_mapping: Mapping[str, str] | None = None,
                 strict: bool = True):
        super().__init__(images_dir, class_map=class_map, label_mapping=label_mapping, strict=strict)
        self.annotations_dir = Path(annotations_dir)
        if not self.annotations_dir.is_dir():
            raise DataError(f"annotations directory not found: {self.annotations_dir}. Pass the folder of VOC *.xml files.")
        self.xml_files = sorted(self.annotations_dir.glob("*.xml"))
        if not self.xml_files:
            raise DataError(f"no *.xml file in {self.annotations_dir}; expected one Pascal VOC XML file per image.")

    def _image_path(self, root: ET.Element, xml_path: Path) -> Path:
        name = (root.findtext("filename") or "").strip()
        if name:
            return self.images_dir / Path(name).name
        for ext in IMAGE_EXTENSIONS:
            candidate = self.images_dir / (xml_path.stem + ext)
            if candidate.exists():
                return candidate
        return self.images_dir / (xml_path.stem + ".jpg")

    def _read(self, xml_path: Path) -> tuple[ET.Element, list[dict]]:
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as e:
            raise DataError(f"{xml_path}: not well-formed XML ({e}); fix or remove the file.") from None
        objects = []
        for k, obj in enumerate(root.iter("object"), start=1):
            name = obj.findtext("name")
            bb = obj.find("bndbox")
            where = f"{xml_path.name} object {k}"
            if name is None or not name.strip():
                raise DataError(f"{where}: <object> has no <name>; every object needs a class name.")
            if bb is None:
                self.report.dropped["no-box"] += 1
                self.report.note(f"{where} ({name.strip()!r}): dropped, no <bndbox>")
                continue
            coords = []
            for tag in ("xmin", "ymin", "xmax", "ymax"):
                text = bb.findtext(tag)
                try:
                    coords.append(float(text))
                except (TypeError, ValueError):
                    raise DataError(f"{where}: <{tag}> is {text!r}, expected a number.") from None
            difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
            objects.append({"name": self._label(name), "box": coords, "difficult": difficult, "where": where})
        return root, objects

    def _parse(self) -> list[Record]:
        parsed = []
        for xml_path in tqdm(self.xml_files, desc="parsing VOC", delay=1.0, disable=None):
            root, objects = self._read(xml_path)
            parsed.append((xml_path, root, objects))
        if self.class_map is None:
            self.class_map = ClassMap.from_labels(o["name"] for _, _, objs in parsed for o in objs)
        records = []
        for index, (xml_path, root, objects) in enumerate(parsed):
            img_path = self._image_path(root, xml_path)
            size = self._image_size(img_path, xml_path.name)
            if size is None:
                continue
            height, width = size
            self._check_size(root, height, width, xml_path)
            boxes, labels, difficult = [], [], []
            for o in objects:
                label = self.class_map.index(o["name"], where=o["where"])
                kept = self._keep_box(o["box"], height, width, o["where"])
                if kept is not None:
                    boxes.append(kept)
                    labels.append(label)
                    difficult.append(o["difficult"])
            records.append(Record(index, img_path, height, width, np.array(boxes, np.float32).reshape(-1, 4),
                                  np.array(labels, np.int64), difficult=np.array(difficult, bool), source=str(xml_path)))
        return records

    def _check_size(self, root: ET.Element, height: int, width: int, xml_path: Path) -> None:
        try:
            w = int(float(root.findtext("size/width")))
            h = int(float(root.findtext("size/height")))
        except (TypeError, ValueError):
            w = h = None
        if (h, w) != (height, width):
            self.report.size_fixed += 1
            self.report.note(f"{xml_path.name}: <size> says {w}x{h} but the image is {width}x{height}; using the image's size")


class COCOBBoxParser(_Parser):
    """COCO detection JSON (``images``, ``annotations``, ``categories``).

    * Category ids may start anywhere (0 included), have gaps and come in any order; labels follow
      the categories sorted by id (``class_map.names[i]`` is the ``i``-th category by id) and
      ``class_map.category_ids[i]`` keeps each label's id as written, which results use.
    * Image ids may be ints or strings (one type per file: pycocotools sorts them);
      ``Record.image_id`` keeps the id as written, which results use; ``record_id`` is the
      integer id when every id is an integer, else the image's position in ``images``.
    * Images with no annotation are kept as negatives. ``iscrowd`` defaults to 0; crowd regions are
      kept and marked (:attr:`Record.iscrowd`): not trained on, ignored by the COCO metric.
    * ``bbox`` is xywh in pixels; an annotation with only a ``segmentation`` gets the polygon's (or
      RLE's) extent, and one with neither is dropped (``no-box``).
    * ``strict`` (default True): an annotation whose ``image_id`` is no id in ``images`` (type
      included: ``2`` is not ``'2'``), a missing or undecodable image are errors; with
      ``strict=False`` such annotations are skipped and counted in
      ``report.dropped["unknown-image"]``, such images in ``report.skipped_images``.
    """

    def __init__(self, annotations_file: str | Path, images_dir: str | Path, *,
                 class_map: ClassMap | Sequence[str] | None = None, label_mapping: Mapping[str, str] | None = None,
                 strict: bool = True):
        super().__init__(images_dir, class_map=class_map, label_mapping=label_mapping, strict=strict)
        self.annotations_file = Path(annotations_file)
        try:
            self.data = json.loads(self.annotations_file.read_text())
        except FileNotFoundError:
            raise DataError(f"COCO annotation file not found: {self.annotations_file}.") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{self.annotations_file}: not valid JSON ({e}).") from None
        if not isinstance(self.data, dict) or not isinstance(self.data.get("images"), list):
            raise DataError(f"{self.annotations_file}: expected a COCO object with an 'images' list "
                            f"(and 'annotations', 'categories'); got {type(self.data).__name__} "
                            f"with keys {sorted(self.data) if isinstance(self.data, dict) else '-'}.")

    def _categories(self) -> dict:
        cats = self.data.get("categories") or []
        try:
            pairs = [(c["id"], normalize_name(c["name"])) for c in sorted(cats, key=lambda c: c["id"])]
        except (KeyError, TypeError) as e:
            raise DataError(f"{self.annotations_file}: every category needs 'id' and 'name' ({e!r} missing).") from None
        ids, names = Counter(i for i, _ in pairs), Counter(n for _, n in pairs)
        dup_ids = {i: [n for j, n in pairs if j == i] for i, k in ids.items() if k > 1}
        if dup_ids:
            raise DataError(f"{self.annotations_file.name}: category ids {dup_ids} are used by more than one category; "
                            "each category needs its own id. Fix the 'categories' list.")
        dup_names = {n: [i for i, m in pairs if m == n] for n, k in names.items() if k > 1}
        if dup_names:
            raise DataError(f"{self.annotations_file.name}: categories {dup_names} share a name under several ids; "
                            "results could not give back each annotation's id. Rename them, or merge their annotations "
                            "into one id in the file.")
        by_id = {cid: self._label(name) for cid, name in pairs}
        first_id = {}  # name -> its lowest id (an explicit label_mapping may merge categories into one name)
        for cid, name in by_id.items():
            first_id.setdefault(name, cid)
        merged = {n: [i for i, m in by_id.items() if m == n] for n in first_id if list(by_id.values()).count(n) > 1}
        if merged:
            self.report.note(f"{self.annotations_file.name}: label_mapping merges categories {merged}; results give "
                             "each merged class the lowest of its ids")
        if self.class_map is None:
            self.class_map = ClassMap(list(first_id), category_ids=list(first_id.values()))
        else:
            absent = [n for n in self.class_map.names if n not in first_id]
            if absent:
                raise DataError(f"{self.annotations_file}: classes {absent} of the given class map are not among its "
                                f"categories {list(first_id)}; pass a class map of this file's category names.")
            self.class_map = ClassMap(self.class_map.names, category_ids=[first_id[n] for n in self.class_map.names])
        return by_id

    def _box(self, ann: dict, where: str) -> list[float] | None:
        bbox = ann.get("bbox")
        if bbox is not None:
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DataError(f"{where}: bbox is {bbox!r}, expected [x, y, width, height].")
            try:
                x, y, w, h = (float(v) if v is not None else math.nan for v in bbox)
            except (TypeError, ValueError):
                raise DataError(f"{where}: bbox {bbox!r} holds a non-number.") from None
            return [x, y, x + w, y + h]
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg and all(isinstance(p, list) and len(p) >= 6 for p in seg):
            pts = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in seg])
            self.report.note(f"{where}: no bbox; using the segmentation's extent")
            return [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            from pycocotools import mask as mask_utils
            rle = mask_utils.frPyObjects(seg, *seg["size"]) if isinstance(seg["counts"], list) else seg
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            self.report.note(f"{where}: no bbox; using the RLE mask's extent")
            return [x, y, x + w, y + h]
        self.report.dropped["no-box"] += 1
        self.report.note(f"{where}: dropped, no bbox and no usable segmentation")
        return None

    def _orphan_annotations(self, by_image: dict, known: set) -> None:
        """Annotations whose ``image_id`` is no id in ``images`` (type included: ``2`` is not ``'2'``).

        Raises a DataError naming them, each image id with its type and whether an image id of
        another type has the same text; with ``strict=False`` they are skipped, counted in
        ``report.dropped["unknown-image"]`` and noted.
        """
        groups = {img_id: [a.get("id") for a in anns] for img_id, anns in by_image.items() if img_id not in known}
        if not groups:
            return
        count = sum(len(ids) for ids in groups.values())
        same_text = {str(i): i for i in known}

        def line(img_id, ann_ids) -> str:
            other = same_text.get(str(img_id))
            where = (f"images has id {other!r} ({type(other).__name__})" if other is not None
                     else f"no image has id {img_id!r} of any type")
            more = f" (+{len(ann_ids) - 5} more)" if len(ann_ids) > 5 else ""
            ids = ", ".join(repr(i) for i in ann_ids[:5])
            return f"annotation id {ids}{more} -> image_id {img_id!r} ({type(img_id).__name__}): {where}"

        listed = "; ".join(line(i, ids) for i, ids in list(groups.items())[:5])
        listed += f"; and {len(groups) - 5} more image ids" if len(groups) > 5 else ""
        what = (f"{self.annotations_file.name}: {count} annotation{'s name' if count > 1 else ' names'} an image id "
                f"that is not in 'images': {listed}")
        if self.strict:
            raise DataError(f"{what}. An annotation's image_id must equal an image's id, type included. Fix the ids, "
                            "or pass strict=False to skip these annotations (counted in "
                            "ParseReport.dropped['unknown-image']).")
        self.report.dropped["unknown-image"] += count
        self.report.note(f"{what}; skipped (strict=False)")

    def _parse(self) -> list[Record]:
        cats = self._categories()
        images = self.data["images"]
        int_ids = all(isinstance(im.get("id"), int) and not isinstance(im.get("id"), bool) for im in images)
        if not int_ids and not all(isinstance(im.get("id"), str) for im in images):
            kinds = sorted({type(im.get("id")).__name__ for im in images})
            raise DataError(f"{self.annotations_file.name}: image ids must be all ints or all strings (COCO tools sort "
                            f"them); this file mixes {kinds}. Write every image id (and annotation image_id) one way.")
        seen: dict = {}
        for pos, im in enumerate(images):
            if im.get("id") in seen:
                first = seen[im["id"]]
                raise DataError(f"{self.annotations_file.name}: images #{first} ({images[first].get('file_name')!r}) and "
                                f"#{pos} ({im.get('file_name')!r}) have the same id {im['id']!r}; every image needs its "
                                "own id (annotations name their image by it). Give one of them a new id.")
            seen[im.get("id")] = pos
        by_image: dict = {}
        for ann in self.data.get("annotations") or []:
            by_image.setdefault(ann.get("image_id"), []).append(ann)
        self._orphan_annotations(by_image, {im.get("id") for im in images})
        records = []
        for pos, im in enumerate(tqdm(images, desc="parsing COCO", delay=1.0, disable=None)):
            if "file_name" not in im:
                raise DataError(f"{self.annotations_file.name}: image #{pos} (id {im.get('id')!r}) has no 'file_name'.")
            path = self.images_dir / im["file_name"]
            size = self._image_size(path, f"{self.annotations_file.name} image {im.get('id')!r}")
            if size is None:
                continue
            height, width = size
            boxes, labels, crowd = [], [], []
            for ann in by_image.get(im.get("id"), []):
                where = f"{im['file_name']} annotation {ann.get('id')!r}"
                if ann.get("category_id") not in cats:
                    raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' "
                                    f"(ids {sorted(cats)}).")
                xyxy = self._box(ann, where)
                kept = None if xyxy is None else self._keep_box(xyxy, height, width, where)
                if kept is not None:
                    boxes.append(kept)
                    labels.append(self.class_map.index(cats[ann["category_id"]], where=where))
                    crowd.append(bool(ann.get("iscrowd", 0)))
            if crowd and all(crowd):
                self.report.note(f"{im['file_name']}: every box is a crowd region; they are ignored in training "
                                 "and evaluation, so this image trains as background")
            rid = im["id"] if int_ids else pos
            records.append(Record(rid, path, height, width, np.array(boxes, np.float32).reshape(-1, 4),
                                  np.array(labels, np.int64), iscrowd=np.array(crowd, bool),
                                  source=str(self.annotations_file), image_id=im["id"]))
        return records
