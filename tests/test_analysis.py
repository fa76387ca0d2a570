"""Result analysis (fpn_lab.metrics.analysis): the confusion matrix against a hand-computed case, the
curves against COCO's own numbers, AP by size with its box counts, the suggested threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fpn_lab.core.records import Record
from fpn_lab.errors import ParamsError
from fpn_lab.metrics.analysis import analyse, check_threshold, match_image
from fpn_lab.metrics.coco import score_detections

NAMES = ["a", "b", "c"]


def _det(image_id, label, xyxy, score):
    x0, y0, x1, y1 = xyxy
    return {"image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}


def _hand_case():
    """One image: a (TP), b detected as c (wrong class), c detected only below the threshold (miss),
    a crowd box with a detection inside it (ignored), one detection on nothing (false positive)."""
    rec = Record(1, "x.png", 300, 300, [[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [100, 100, 200, 200]],
                 [0, 1, 2, 0], iscrowd=[False, False, False, True])
    dets = [_det(1, 0, (0, 0, 10, 10), 0.9),        # TP a
            _det(1, 2, (20, 20, 40, 40), 0.8),      # on b, says c
            _det(1, 0, (70, 70, 80, 80), 0.7),      # on nothing
            _det(1, 1, (110, 110, 150, 150), 0.9),  # inside the crowd box: ignored
            _det(1, 0, (50, 50, 60, 60), 0.3)]      # on c, says a, below 0.5
    return [rec], dets


def test_confusion_matrix_of_a_hand_computed_case():
    records, dets = _hand_case()
    result, ev = score_detections(records, dets, NAMES)
    an = analyse(records, dets, NAMES, result, ev, score_threshold=0.5)
    # rows: true a, b, c, background; columns: predicted a, b, c, background
    assert an.confusion.tolist() == [[1, 0, 0, 0],
                                     [0, 0, 1, 0],
                                     [0, 0, 0, 1],
                                     [1, 0, 0, 0]]
    norm = an.confusion_normalised
    assert norm[0].tolist() == [1, 0, 0, 0] and norm[3].tolist() == [1, 0, 0, 0]
    (img,) = an.images
    assert img.tp == [(0, 0)] and img.wrong_class == [(1, 1)] and img.fp == [2] and img.fn == [2]
    assert (img.n_fp, img.n_fn) == (2, 2) and an.worst(3) == [img]
    # at 0.25 the low detection pairs with c: the miss becomes a wrong class
    low = analyse(records, dets, NAMES, result, ev, score_threshold=0.25)
    assert low.confusion[2].tolist() == [1, 0, 0, 0]


def test_matching_is_greedy_by_iou_and_one_to_one():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 12]], np.float32)
    dets = np.array([[0, 0, 10, 11], [0, 0, 10, 10]], np.float32)
    pairs, fn, fp = match_image(gt, np.zeros(2, bool), dets)
    assert pairs == [(0, 1), (1, 0)] and fn == [] and fp == []  # det 1 is exact for gt 0, so det 0 takes gt 1
    pairs, fn, fp = match_image(gt[:1], np.zeros(1, bool), dets)
    assert pairs == [(0, 1)] and fp == [0]


def test_curves_agree_with_coco_s_own_numbers(bccd_records):
    """P/R at the lowest threshold from evalImgs; the PR curve's mean is COCO's per-class AP50."""
    _, _, test = bccd_records
    records = test[:8]
    rng = np.random.default_rng(0)
    dets = []
    for r in records:  # jittered copies of the ground truth plus random boxes, random scores
        for b, lab in zip(r.boxes, r.labels):
            dets.append(_det(r.image_id, int(lab), b + rng.normal(0, 4, 4), float(rng.uniform(0.2, 1))))
        for _ in range(3):
            x, y = rng.uniform(0, 500, 2)
            dets.append(_det(r.image_id, int(rng.integers(3)), (x, y, x + 40, y + 40), float(rng.uniform(0, 0.6))))
    names = ["Platelets", "RBC", "WBC"]
    result, ev = score_detections(records, dets, names)
    an = analyse(records, dets, names, result, ev)
    for k, name in enumerate(names):
        n_gt = sum(int((r.labels == k).sum()) for r in records)
        assert an.gt_counts[k] == n_gt
        # recall at threshold 0 never exceeds the share of boxes with a detection at IoU 0.5, and precision is TP / D
        assert 0 < an.recall[k, 0] <= 1 and 0 < an.precision[k, 0] < 1
        assert np.all(np.diff(an.recall[k][~np.isnan(an.recall[k])]) <= 1e-12)  # recall falls as the threshold rises
    # AP50 over classes = mean of the interpolated PR curves (pycocotools' own arrays)
    assert np.nanmean(an.pr_precision) == pytest.approx(result["AP50"], abs=1e-9)
    best = an.best_threshold
    assert 0 <= best <= 1 and an.score_threshold == best
    j = int(round(best * 100))
    assert an.best_mean_f1 == pytest.approx(np.nanmean(an.f1[:, j])) and an.best_mean_f1 >= np.nanmean(an.f1, axis=0).max() - 1e-12
    d = an.as_dict()
    assert d["best_threshold"]["score"] == best and len(d["curves"]["score_thresholds"]) == 101
    assert d["confusion_matrix"]["labels"] == [*names, "background"]


def test_ap_by_size_counts_the_boxes_and_says_when_a_range_is_empty():
    recs = [Record(1, "x.png", 300, 300, [[0, 0, 20, 20], [0, 0, 50, 50], [100, 100, 160, 160]], [0, 0, 1],
                   difficult=[False, False, True])]
    dets = [_det(1, 0, (0, 0, 20, 20), 0.9), _det(1, 0, (0, 0, 50, 50), 0.8)]
    result, ev = score_detections(recs, dets, NAMES)
    by_size = analyse(recs, dets, NAMES, result, ev, 0.5).by_size
    assert by_size["small"]["boxes"] == 1 and by_size["medium"]["boxes"] == 1
    assert by_size["small"]["AP"] == pytest.approx(1.0) and by_size["medium"]["AP"] == pytest.approx(1.0)
    # the 60x60 box is difficult: not scored, so no large box and no number, never -1
    assert by_size["large"] == {"AP": None, "AR": None, "boxes": 0, "area_px2": [96 ** 2, None],
                                "note": "no ground-truth boxes in this range"}
    assert math.isnan(result["AP_large"])


def test_no_detections_gives_no_curves_and_an_explicit_threshold():
    records, _ = _hand_case()
    result, ev = score_detections(records, [], NAMES)
    an = analyse(records, [], NAMES, result, ev, score_threshold="auto")
    assert ev is None and an.f1 is None and math.isnan(an.best_threshold) and an.score_threshold == 0.5
    assert an.confusion[:, 3].tolist() == [1, 1, 1, 0]  # every scored box missed
    assert an.as_dict()["best_threshold"] == {"score": None, "mean_F1": None}


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.4x", True, None])
def test_threshold_must_be_auto_or_a_score(bad):
    with pytest.raises(ParamsError, match="detection_threshold: expected a score in"):
        check_threshold(bad)
    assert check_threshold("auto") == "auto" and check_threshold(1) == 1.0


@pytest.mark.parametrize("text, expected", [("0.4", 0.4), (".25", 0.25), ("1", 1.0), ("auto", "auto")])
def test_threshold_parameter_from_the_command_line(text, expected):
    from fpn_lab.runner.params import coerce

    assert coerce("detection_threshold", text, "auto") == (expected, None)


@pytest.mark.parametrize("text", ["1.2.3", "0..4", "abc"])
def test_a_malformed_threshold_is_a_params_error(text):
    from fpn_lab.runner.params import coerce

    with pytest.raises(ParamsError, match="detection_threshold: expected a score in"):
        coerce("detection_threshold", text, "auto")


def test_auto_threshold_suggests_nothing_when_every_f1_is_zero():
    """Detections that never hit a box make every F1 0; auto used to pick the first threshold, 0.00."""
    records, _ = _hand_case()
    dets = [_det(1, 0, (200, 0, 220, 20), 0.9), _det(1, 1, (250, 250, 290, 290), 0.4)]  # both on background
    result, ev = score_detections(records, dets, NAMES)
    an = analyse(records, dets, NAMES, result, ev, score_threshold="auto")
    assert ev is not None and np.nanmax(an.f1) == 0
    assert math.isnan(an.best_threshold) and an.best_mean_f1 == 0.0 and an.score_threshold == 0.5
    assert an.as_dict()["best_threshold"] == {"score": None, "mean_F1": 0.0}
    assert an.confusion[3, :3].tolist() == [1, 0, 0]  # the score-0.9 detection is a false positive at 0.5


def test_a_wrong_class_box_with_a_higher_iou_does_not_take_a_box_found_by_its_class():
    """The confusion matrix matched regardless of class: a wrong-class detection with a higher IoU
    took the box, the right detection became background, while the same analysis reported that
    class's precision and recall as 1.0."""
    rec = Record(1, "x.png", 100, 100, [[10, 10, 50, 50]], [0])
    dets = [_det(1, 1, (10, 10, 50, 52), 0.9),   # class b, IoU 0.95
            _det(1, 0, (10, 10, 50, 62), 0.8)]   # class a (right), IoU 0.77
    result, ev = score_detections([rec], dets, NAMES)
    an = analyse([rec], dets, NAMES, result, ev, score_threshold=0.5)
    j = int(np.argmin(np.abs(an.thresholds - 0.5)))
    assert an.precision[0, j] == 1.0 and an.recall[0, j] == 1.0  # COCO's own matching: a found
    assert an.confusion[0].tolist() == [1, 0, 0, 0]  # a -> a, not a -> b
    assert an.confusion[3].tolist() == [0, 1, 0, 0]  # the b detection is on background
    (img,) = an.images
    assert img.tp == [(0, 1)] and img.wrong_class == [] and img.fp == [0] and img.fn == []
