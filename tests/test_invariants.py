"""One number per model and validation set, whichever path computes it.

For each headline detector (YOLOX, RetinaNet, VFNet), briefly trained on small images: the last
epoch's per-epoch AP, the notebook's final evaluation (``run.evaluate`` on a dataset letterboxed by
IceVision's ``Adapter``, which fills with 114 grey whatever the model), a reloaded checkpoint's AP
and the exported ONNX model's AP are the same, and ``predictions.json`` scores the same against the
user's own COCO file (category ids 0, 3, 7, 12, string image ids, annotation ids not from 1) with
pycocotools run by hand. Cost: about a minute for the three.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import pycocotools_stats
from fpn_lab.checkpoint import load_checkpoint, save_checkpoint
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.datasets import open_dataset
from fpn_lab.data.transforms import aug_tfms, resize_and_pad
from fpn_lab.export import OnnxDetector, export_onnx
from fpn_lab.icevision import tfms
from fpn_lab.inference import evaluate
from fpn_lab.learner.learner import make_learner
from fpn_lab.models.build import build_model
from fpn_lab.runner.context import Run, set_seed

SIZE = 128
SCORE_ALL = {"model.test_cfg.score_thr": 0.0}  # every box of a barely trained model, so the AP is not 0 == 0


@pytest.fixture(scope="module")
def users_coco(coco_fridge, tmp_path_factory):
    """The COCO fridge set with annotation ids from 100 on (not 1..n): the user's own file."""
    out = tmp_path_factory.mktemp("users_coco")
    shutil.copytree(coco_fridge / "images", out / "images")
    data = json.loads((coco_fridge / "annotations.json").read_text())
    for k, a in enumerate(data["annotations"]):
        a["id"] = 100 + 7 * k
    (out / "annotations.json").write_text(json.dumps(data))
    return out


def _same_detections(got: list[dict], expected: list[dict]) -> None:
    """The same boxes for the same images and classes, boxes and scores within onnxruntime's rounding.
    Boxes whose scores nearly tie may come in another order, and at an image's cut-off
    (``max_per_img``) a near-tie may keep the other box: such a box scores within rounding of the
    image's last kept score."""
    import numpy as np

    assert len(got) == len(expected)
    groups: dict = {}
    for d in expected:
        groups.setdefault((d["image_id"], d["category_id"]), []).append([*d["bbox"], d["score"]])
    last = {}
    for d in expected:
        last[d["image_id"]] = min(last.get(d["image_id"], 1.0), d["score"])
    at_cutoff = 0
    for d in got:
        candidates = np.array(groups.get((d["image_id"], d["category_id"]), []) or [[np.inf] * 5])
        diff = np.abs(candidates - np.array([*d["bbox"], d["score"]]))
        close = np.flatnonzero((diff[:, :4] <= 0.01).all(1) & (diff[:, 4] <= 1e-4))
        if close.size:
            groups[(d["image_id"], d["category_id"])].pop(int(close[0]))
        else:
            assert d["score"] <= last[d["image_id"]] + 1e-4, f"no match for {d}"
            at_cutoff += 1
    assert at_cutoff <= 0.01 * len(got)


@pytest.mark.parametrize("preset", ["yolox_tiny_pafpn_300e", "retinanet_r18_fpn_1x", "vfnet_r50_fpn_1x"])
def test_every_path_gives_the_same_ap(preset, users_coco, tmp_path):
    data = open_dataset(users_coco, split="random", seed=0)
    records = [*data.train, *data.valid]  # validate on all 6 images (12 boxes), as trained
    class_map = data.class_map
    assert sorted(class_map.category_ids) == [0, 3, 7, 12]
    set_seed(0)
    model = build_model(preset, num_classes=len(class_map), cfg_options=SCORE_ALL)
    dls = make_dataloaders(Dataset(records, aug_tfms(SIZE)), Dataset(records, resize_and_pad(SIZE)), batch_size=3,
                           seed=0)
    learn = make_learner(dls, model, class_map, opt="adam", wd=0.0)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)
    names = learn.recorder.metric_names[1:-1]
    epoch_ap = dict(zip(names, learn.recorder.values[-1]))["AP"]

    run = Run({}, run_dir=tmp_path / "run")
    valid_ds = Dataset(records, tfms.A.Adapter([*tfms.A.resize_and_pad(SIZE)]))  # 114 grey, the notebook's cell
    final = run.evaluate(model, valid_ds, class_map)
    predictions = json.loads((run.dir / "predictions.json").read_text())
    assert len(predictions) >= 6  # boxes on every image (score_thr 0), so equal numbers say something
    assert final["AP"] == epoch_ap

    path = save_checkpoint(tmp_path / "model.pth", model, class_map, image_size=SIZE)
    reloaded, info = load_checkpoint(path)
    result, detections = evaluate(reloaded, Dataset(records, resize_and_pad(SIZE)), info["class_map"])
    assert result["AP"] == final["AP"] and detections == predictions

    onnx = OnnxDetector(export_onnx(model, SIZE, tmp_path / "model.onnx", class_names=class_map))
    result, detections = evaluate(onnx, Dataset(records, resize_and_pad(SIZE + 32)), onnx.class_map, batch_size=1)
    assert result["AP"] == pytest.approx(final["AP"], abs=1e-9)  # re-letterboxed to the file's 128 px
    _same_detections(detections, predictions)

    theirs = tuple(pycocotools_stats(users_coco / "annotations.json", predictions)[:2])
    assert theirs == pytest.approx((final["AP"], final["AP50"]), abs=1e-12)
    if preset != "yolox_tiny_pafpn_300e":  # one epoch leaves YOLOX's boxes off every object (AP 0)
        assert final["AP50"] > 0
