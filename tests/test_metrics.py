"""The COCO metric against pycocotools' own semantics, including the R13 edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import CASES, pycocotools_stats
from fpn_lab.core.records import Record
from fpn_lab.data.parsers import COCOBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.metrics.coco import detections_to_coco, score_detections


def test_ground_truth_fed_as_detections_gives_ap_1(bccd_records):
    parser, _, test = bccd_records
    dets = [d for r in test for d in detections_to_coco(r.image_id, r.boxes, np.ones(len(r.boxes)), r.labels, parser.class_map)]
    res = score_detections(test, dets, parser.class_map.names)[0]
    assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in res["per_class_AP"].values())


def test_shifted_detections_lower_ap_as_pycocotools_does(bccd_records):
    parser, _, test = bccd_records
    dets = [d for r in test for d in detections_to_coco(r.image_id, r.boxes + 6.0, np.ones(len(r.boxes)), r.labels, parser.class_map)]
    res = score_detections(test, dets, parser.class_map.names)[0]
    assert 0.0 < res["AP"] < res["AP50"] <= 1.0


def test_r13_no_detections_is_zero_not_minus_one():
    parser = COCOBBoxParser(CASES / "R13" / "gt_one_box.json", CASES / "R13" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    res = score_detections(records, json.loads((CASES / "R13" / "predictions_empty.json").read_text()), parser.class_map.names)[0]
    assert res["AP"] == 0.0 and res["AR100"] == 0.0 and res["message"] == "no detections"


def test_r13_no_ground_truth_is_nan_with_a_message():
    parser = COCOBBoxParser(CASES / "R13" / "gt_no_annotations.json", CASES / "R13" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    res = score_detections(records, json.loads((CASES / "R13" / "predictions_one_fp.json").read_text()), parser.class_map.names)[0]
    assert math.isnan(res["AP"]) and res["message"] == "no ground-truth boxes"


def test_r13_one_false_positive_gives_zero():
    parser = COCOBBoxParser(CASES / "R13" / "gt_one_box.json", CASES / "R13" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    far = [{"image_id": 1, "category_id": 1, "bbox": [50, 40, 5, 5], "score": 0.9}]
    assert score_detections(records, far, parser.class_map.names)[0]["AP"] == 0.0


def test_difficult_boxes_are_ignored_not_false_negatives():
    rec = Record(1, "x.png", 100, 100, [[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0], difficult=[False, True])
    dets = detections_to_coco(1, np.array([[10, 10, 50, 50]]), np.array([0.9]), np.array([0]), ["a"])
    assert score_detections([rec], dets, ["a"])[0]["AP"] == pytest.approx(1.0)


def test_evaluate_writes_coco_results_in_original_pixels(bccd_records):
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.inference import evaluate
    from fpn_lab.mmdet_adapter.wrapper import score_threshold
    from fpn_lab.models.build import build_model

    parser, _, test = bccd_records
    model = build_model("yolox_tiny_pafpn_300e", num_classes=3)
    with score_threshold(model, 0.0):
        result, dets = evaluate(model, Dataset(test[:2], resize_and_pad(128)), parser.class_map.names)
    assert dets and {d["image_id"] for d in dets} <= {r.record_id for r in test[:2]}
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} and 1 <= d["category_id"] <= 3 for d in dets)
    boxes = np.array([d["bbox"] for d in dets])
    assert (boxes[:, 0] + boxes[:, 2] <= 640 + 1e-3).all() and (boxes[:, 1] + boxes[:, 3] <= 480 + 1e-3).all()
    assert 0.0 <= result["AP"] <= 1.0


def test_r01_detections_on_a_negative_image_are_false_positives_only():
    parser = COCOBBoxParser(CASES / "R01" / "annotations.json", CASES / "R01" / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    pos = next(r for r in records if r.num_boxes)
    neg = next(r for r in records if not r.num_boxes)
    hit = detections_to_coco(pos.image_id, pos.boxes, np.array([0.9]), pos.labels, parser.class_map)
    assert score_detections(records, hit, parser.class_map.names)[0]["AP"] == pytest.approx(1.0)
    fp = detections_to_coco(neg.image_id, np.array([[1, 1, 20, 20]]), np.array([0.95]), np.array([0]), parser.class_map)
    res = score_detections(records, hit + fp, parser.class_map.names)[0]
    assert res["AP"] < 1.0 and res["AR100"] == pytest.approx(1.0)  # precision drops, recall does not


def _coco_set_with_source_ids(tmp_path):
    """The fridge images as a COCO file with category ids 12, 0, 7, 3 (gapped, out of order) and string image ids."""
    from fpn_lab.data.parsers import VOCBBoxParser
    from conftest import DATA

    voc = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    (records,) = voc.parse(SingleSplitSplitter())
    ids = dict(zip(voc.class_map.names, (12, 0, 7, 3)))
    images, anns = [], []
    for r in records:
        image_id = f"fridge/{r.filepath.stem}"
        images.append({"id": image_id, "file_name": r.filepath.name, "width": r.width, "height": r.height})
        for b, label in zip(r.boxes.tolist(), r.labels.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": ids[voc.class_map.name(label)],
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": i, "name": n} for n, i in ids.items()]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, DATA / "fridge" / "images"


def test_predictions_score_the_same_against_the_users_own_file(tmp_path):
    path, images = _coco_set_with_source_ids(tmp_path)
    parser = COCOBBoxParser(path, images)
    (records,) = parser.parse(SingleSplitSplitter())
    assert sorted(parser.class_map.category_ids) == [0, 3, 7, 12]
    rng = np.random.default_rng(0)
    dets = []
    for r in records:  # imperfect detections: jittered boxes, random scores, one false positive per image
        boxes = r.boxes + rng.normal(0, 6, r.boxes.shape).astype(np.float32)
        boxes = np.concatenate([boxes, [[1, 1, 30, 30]]])
        labels = np.concatenate([r.labels, [0]])
        dets += detections_to_coco(r.image_id, boxes, rng.uniform(0.1, 1, len(boxes)), labels, parser.class_map)
    assert {d["image_id"] for d in dets} == {im["id"] for im in json.loads(path.read_text())["images"]}
    assert {d["category_id"] for d in dets} <= {0, 3, 7, 12}
    ours = score_detections(records, dets, parser.class_map)[0]
    theirs = pycocotools_stats(path, dets)
    assert 0.05 < ours["AP"] < 0.95
    assert [ours[k] for k in ("AP", "AP50", "AP75")] == pytest.approx(theirs[:3], abs=1e-12)


def test_r09_category_ids_from_zero_out_of_order_map_back():
    case = CASES / "R09"
    parser = COCOBBoxParser(case / "annotations.json", case / "images")
    (rec,) = parser.parse(SingleSplitSplitter())[0]
    assert parser.class_map.names == ["apple", "mango", "zebra"] and parser.class_map.category_ids == [0, 3, 7]
    dets = detections_to_coco(rec.image_id, rec.boxes, np.full(len(rec.boxes), 0.99), rec.labels, parser.class_map)
    key = lambda d: d["category_id"]  # noqa: E731
    perfect = json.loads((case / "predictions_perfect.json").read_text())
    assert [(d["image_id"], d["category_id"], d["bbox"]) for d in sorted(dets, key=key)] == \
           [(d["image_id"], d["category_id"], d["bbox"]) for d in sorted(perfect, key=key)]
    assert score_detections([rec], dets, parser.class_map)[0]["AP"] == pytest.approx(1.0)
    assert pycocotools_stats(case / "annotations.json", dets)[0] == pytest.approx(1.0)


def test_r12_string_image_ids_stay_strings():
    case = CASES / "R12"
    parser = COCOBBoxParser(case / "annotations_string_ids.json", case / "images")
    (records,) = parser.parse(SingleSplitSplitter())
    dets = [d for r in records for d in detections_to_coco(r.image_id, r.boxes, np.ones(len(r.boxes)), r.labels,
                                                            parser.class_map)]
    assert {d["image_id"] for d in dets} == {"img_a", "2"}
    assert score_detections(records, dets, parser.class_map)[0]["AP"] == pytest.approx(1.0)
    assert pycocotools_stats(case / "annotations_string_ids.json", dets)[0] == pytest.approx(1.0)


def test_records_sharing_ids_are_refused_by_the_dataset_and_the_evaluation(bccd_records):
    """Two parses concatenated share record and image ids: detections overwrote each other in the
    metric and pycocotools merged their ground truth, and the run said ok."""
    import dataclasses

    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.errors import DataError

    parser, _, test = bccd_records
    twice = list(test[:3]) + list(test[:2])  # ids 0..2, then 0..1
    with pytest.raises(DataError, match=r"records 0 and 3 .* share record_id .*2 duplicate"):
        Dataset(twice, resize_and_pad(64))
    renumbered = [dataclasses.replace(r, record_id=100 + k) for k, r in enumerate(twice)]  # image ids still shared
    with pytest.raises(DataError, match="share image_id"):
        Dataset(renumbered, resize_and_pad(64))
    dets = [d for r in twice for d in detections_to_coco(r.image_id, r.boxes, np.ones(len(r.boxes)), r.labels,
                                                          parser.class_map)]
    with pytest.raises(DataError, match="2 image id.* more than one record"):
        score_detections(twice, dets, parser.class_map)[0]


def test_dataset_of_parse_output_names_the_split_lists(bccd_records):
    """Dataset(parser.parse()) got [train, valid] and failed later with an AttributeError."""
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.errors import DataError

    _, train, test = bccd_records
    with pytest.raises(DataError, match=r"element 0 of records is a list, expected a Record.*train_records, valid_records"):
        Dataset([train, test], resize_and_pad(64))
