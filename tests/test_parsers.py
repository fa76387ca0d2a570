"""Parsers on BCCD and on the ../shared/cases inputs (copied into tests/data/cases)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conftest import CASES, DATA, SHARED
from fpn_lab.core.class_map import ClassMap
from fpn_lab.data.parsers import COCOBBoxParser, VOCBBoxParser, sanitize_box
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.errors import DataError


def test_bccd_drops_the_two_zero_area_boxes_and_names_their_files(caplog):
    with caplog.at_level(logging.WARNING, logger="fpn_lab.data"):
        parser = VOCBBoxParser(DATA / "bccd" / "annotations", DATA / "bccd" / "images")
        records = parser.parse(SingleSplitSplitter())[0]
    assert len(records) == 364
    assert parser.report.dropped == {"zero-area": 2}
    assert parser.report.boxes == 4155 + 372 + 361 - 2
    assert parser.class_map.names == ["Platelets", "RBC", "WBC"]
    text = caplog.text
    assert "BloodImage_00338.xml" in text and "BloodImage_00343.xml" in text
    for r in records:
        assert r.boxes.dtype == np.float32 and r.labels.dtype == np.int64
        assert (r.boxes[:, 2] > r.boxes[:, 0]).all() and (r.boxes[:, 3] > r.boxes[:, 1]).all()
        assert (r.boxes[:, [0, 2]] <= r.width).all() and (r.boxes[:, [1, 3]] <= r.height).all()


def test_record_shapes_for_fridge():
    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    records = parser.parse(SingleSplitSplitter())[0]
    assert len(records) == 6 and sum(r.num_boxes for r in records) == 12
    assert sorted(parser.class_map.names) == ["can", "carton", "milk_bottle", "water_bottle"]
    assert all((r.height, r.width) == (666, 499) for r in records)


@pytest.mark.parametrize("box, status", [
    ([1, 1, 10, 10], "ok"), ([-5, 1, 10, 10], "clipped"), ([0, 0, 0, 0], "zero-area"), ([40, 5, 20, 10], "inverted"),
    ([10, 60, 20, 70], "outside"), ([float("nan"), 1, 2, 3], "non-finite"), ([1, 1, float("inf"), 3], "non-finite"),
])
def test_sanitize_box_kinds(box, status):
    kept, got = sanitize_box(box, height=48, width=64)
    assert got == status
    assert (kept is None) == (status not in ("ok", "clipped"))


def test_r01_negative_images_are_kept_and_counted():
    coco = COCOBBoxParser(CASES / "R01" / "annotations.json", CASES / "R01" / "images")
    records = coco.parse(SingleSplitSplitter())[0]
    assert len(records) == 2 and coco.report.negatives == 1
    neg = next(r for r in records if r.filepath.name == "neg.png")
    assert neg.boxes.shape == (0, 4) and neg.labels.shape == (0,)


def test_r02_box_wholly_outside_is_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fpn_lab.data"):
        parser = COCOBBoxParser(CASES / "R02" / "annotations.json", CASES / "R02" / "images")
        (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert rec.num_boxes == 2 and parser.report.dropped == {"outside": 1}
    np.testing.assert_allclose(rec.boxes, [[10, 10, 30, 30], [5, 20, 20, 32]])
    assert "a.png annotation 2" in caplog.text


def test_r04_zero_area_and_inverted_boxes_are_dropped_never_swapped():
    coco = COCOBBoxParser(CASES / "R04" / "annotations.json", CASES / "R04" / "images")
    (rec,) = coco.parse(SingleSplitSplitter())[0]
    assert rec.num_boxes == 1 and coco.report.dropped["zero-area"] == 3
    voc_dir = CASES / "R04"
    parser = VOCBBoxParser(voc_dir, voc_dir / "images")
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert rec.num_boxes == 1 and parser.report.dropped == {"inverted": 2}
    assert any("object 2" in e for e in parser.report.events) and any("object 3" in e for e in parser.report.events)


def test_r06_decimal_voc_coordinates_parse_as_floats():
    parser = VOCBBoxParser(CASES / "R06", CASES / "R06" / "images")
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    np.testing.assert_allclose(rec.boxes, [[10.5, 12.25, 40.75, 30.0], [44.0, 5.70000076293945, 60.0, 20.0]], atol=1e-5)


def test_r08_case_variants_are_an_error_not_four_classes():
    with pytest.raises(DataError, match="differ only by case"):
        VOCBBoxParser(CASES / "R08", CASES / "R08" / "images").parse(SingleSplitSplitter())[0]
    names = json.loads((CASES / "R08" / "class_map.json").read_text())
    names = names if isinstance(names, list) else list(names.values()) if isinstance(names, dict) else names
    with pytest.raises(DataError, match="traffic light"):
        VOCBBoxParser(CASES / "R08", CASES / "R08" / "images", class_map=ClassMap(names)).parse(SingleSplitSplitter())[0]
    mapping = {"Traffic Light": "traffic light", "traffic_light": "traffic light"}
    parser = VOCBBoxParser(CASES / "R08", CASES / "R08" / "images", label_mapping=mapping)
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert parser.class_map.names == ["traffic light"] and (rec.labels == 0).all() and rec.num_boxes == 4


def test_r11_crowd_missing_iscrowd_and_segmentation_only(caplog):
    with caplog.at_level(logging.WARNING, logger="fpn_lab.data"):
        parser = COCOBBoxParser(CASES / "R11" / "annotations.json", CASES / "R11" / "images")
        crowd, mixed = parser.parse(SingleSplitSplitter())[0]
    assert crowd.iscrowd.tolist() == [True] and not crowd.train_mask.any()
    assert mixed.iscrowd.tolist() == [False, False]
    np.testing.assert_allclose(mixed.boxes[1], [30, 10, 50, 40])
    assert "every box is a crowd region" in caplog.text


def test_missing_image_is_an_error_naming_it_or_skipped_when_not_strict(tmp_path):
    ann = {"images": [{"id": 1, "file_name": "missing.png", "width": 10, "height": 10}], "annotations": [],
           "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="missing.png"):
        COCOBBoxParser(tmp_path / "a.json", tmp_path).parse(SingleSplitSplitter())[0]
    with pytest.raises(DataError, match="no usable image"):
        COCOBBoxParser(tmp_path / "a.json", tmp_path, strict=False).parse(SingleSplitSplitter())[0]


@pytest.mark.skipif(not (SHARED / "cases").is_dir(), reason="../shared/cases is absent (only in the team's checkouts and CI)")
def test_shipped_copies_match_shared_cases():
    # every shipped file is a byte-identical copy; a case's scripts may be left out when the test
    # builds the same inputs itself (N10's generated images, N09's make_and_run.py)
    copies = [f for f in CASES.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    assert copies
    for f in copies:
        original = SHARED / "cases" / f.relative_to(CASES)
        assert original.is_file() and original.read_bytes() == f.read_bytes(), f


def test_coco_category_ids_with_gaps_and_string_image_ids(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    ann = {"images": [{"id": "img-a", "file_name": "a.png", "width": 40, "height": 30}],
           "annotations": [{"id": 1, "image_id": "img-a", "category_id": 17, "bbox": [1, 1, 5, 5]},
                           {"id": 2, "image_id": "img-a", "category_id": 3, "bbox": [10, 10, 5, 5]}],
           "categories": [{"id": 17, "name": "z"}, {"id": 3, "name": "y"}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    parser = COCOBBoxParser(tmp_path / "a.json", tmp_path)
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert parser.class_map.names == ["y", "z"] and rec.labels.tolist() == [1, 0] and rec.record_id == 0


def test_voc_missing_size_uses_the_real_image_size(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "a.xml").write_text("<annotation><filename>a.png</filename><object><name>x</name>"
                                    "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>50</xmax><ymax>20</ymax></bndbox>"
                                    "</object></annotation>")
    parser = VOCBBoxParser(tmp_path, tmp_path)
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert (rec.height, rec.width) == (30, 40) and parser.report.size_fixed == 1
    np.testing.assert_allclose(rec.boxes, [[1, 2, 40, 20]])
    assert parser.report.clipped == 1


def test_r12_string_image_ids_are_matched_by_the_annotations():
    parser = COCOBBoxParser(CASES / "R12" / "annotations_string_ids.json", CASES / "R12" / "images")
    a, b = parser.parse(SingleSplitSplitter())[0]
    assert (a.filepath.name, b.filepath.name) == ("s1.png", "s2.png")
    assert a.num_boxes == b.num_boxes == 1 and parser.report.negatives == 0 and not parser.report.dropped
    np.testing.assert_allclose(b.boxes, [[30, 10, 50, 40]])


def test_r12_image_id_of_another_type_is_an_error_naming_the_annotation_and_both_ids():
    with pytest.raises(DataError) as err:
        COCOBBoxParser(CASES / "R12" / "annotations_id_type_mismatch.json", CASES / "R12" / "images").parse(SingleSplitSplitter())[0]
    msg = str(err.value)
    assert "annotation id 1" in msg and "image_id 2 (int)" in msg and "images has id '2' (str)" in msg, msg
    assert "strict=False" in msg


def test_r12_orphan_annotations_are_skipped_counted_and_noted_when_not_strict():
    parser = COCOBBoxParser(CASES / "R12" / "annotations_id_type_mismatch.json", CASES / "R12" / "images", strict=False)
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert rec.num_boxes == 0 and parser.report.dropped == {"unknown-image": 1}
    assert parser.report.as_dict()["dropped"] == {"unknown-image": 1} and "unknown-image: 1" in str(parser.report)
    assert any("annotation id 1" in e and "image_id 2 (int)" in e for e in parser.report.events)


def test_annotations_naming_an_image_id_absent_in_every_type_are_listed(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    anns = [{"id": 10 + k, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]} for k in range(8)]
    anns.append({"id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]})  # no image_id at all
    anns.append({"id": 100, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]})
    ann = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    with pytest.raises(DataError) as err:
        COCOBBoxParser(tmp_path / "a.json", tmp_path).parse(SingleSplitSplitter())[0]
    msg = str(err.value)
    assert "9 annotations" in msg and "annotation id 10" in msg and "image_id 7 (int)" in msg, msg
    assert "annotation id 99" in msg and "image_id None (NoneType)" in msg, msg
    assert "no image has id 7" in msg and "images has id" not in msg, msg
    parser = COCOBBoxParser(tmp_path / "a.json", tmp_path, strict=False)
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert rec.num_boxes == 1 and parser.report.dropped == {"unknown-image": 9}


def test_n09_truncated_jpeg_fails_the_strict_parse_naming_it():
    with pytest.raises(DataError, match=r"img2\.xml: .*img2\.jpg.*truncated.*strict=False"):
        VOCBBoxParser(CASES / "N09" / "annotations", CASES / "N09" / "images").parse(SingleSplitSplitter())[0]


def test_n09_truncated_jpeg_is_skipped_and_counted_when_not_strict_and_every_item_loads():
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import aug_tfms, resize_and_pad

    parser = VOCBBoxParser(CASES / "N09" / "annotations", CASES / "N09" / "images", strict=False)
    records = parser.parse(SingleSplitSplitter())[0]
    assert [r.filepath.name for r in records] == ["img0.jpg", "img1.jpg"]
    assert parser.report.skipped_images == 1 and any("img2.jpg" in e for e in parser.report.events)
    for tfms in (resize_and_pad(64), aug_tfms(64)):
        ds = Dataset(records, tfms)
        assert [ds[i][0].shape for i in range(len(ds))] == [(64, 64, 3)] * 2


@pytest.mark.parametrize("change, match", [
    ("image-id", r"images #0 \('a.png'\) and #1 \('b.png'\) have the same id 1"),
    ("category-id", r"category ids \{3: \['can', 'soda'\]\} are used by more than one category"),
    ("category-name", r"categories \{'can': \[3, 50\]\} share a name under several ids"),
])
def test_coco_duplicate_ids_and_names_are_errors(tmp_path, change, match):
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30)).save(tmp_path / name)
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 1 if change == "image-id" else 2, "file_name": "b.png", "width": 40, "height": 30}]
    cats = [{"id": 3, "name": "can"}, {"id": 3 if change == "category-id" else 50,
                                       "name": "can" if change == "category-name" else "soda"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},
            {"id": 2, "image_id": images[1]["id"], "category_id": cats[1]["id"], "bbox": [2, 2, 5, 5]}]
    (tmp_path / "a.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    with pytest.raises(DataError, match=match):
        COCOBBoxParser(tmp_path / "a.json", tmp_path).parse(SingleSplitSplitter())[0]
