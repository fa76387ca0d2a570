"""IceVision's getting-started code on fpn_lab, with only the import line changed.

The sequence below is IceVision's getting-started notebook (parse, split, transforms, datasets,
``models.mmdet.<type>``, dataloaders, learner with ``COCOMetric``, ``fine_tune``, results,
inference, checkpoint round trip, ``end2end_detect``), on the fridge images IceVision used, at a
tiny size for one epoch each, from scratch (pretrained off: no download).
"""

from __future__ import annotations

import contextlib
import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import fpn_lab.all as iv  # noqa: E402  (the one line an IceVision user changes)
from fpn_lab.all import *  # noqa: E402,F401,F403

from conftest import DATA  # noqa: E402
from fpn_lab.mmdet_adapter.wrapper import score_threshold  # noqa: E402

SIZE = 64


def icevision_selection(selection):
    """IceVision's model-choice cell, verbatim but for the names' module."""
    if selection == 0:
        model_type = models.mmdet.vfnet  # noqa: F405
        backbone = model_type.backbones.resnet50_fpn_mstrain_2x
    if selection == 1:
        model_type = models.mmdet.retinanet  # noqa: F405
        backbone = model_type.backbones.resnet50_fpn_1x
    if selection == 2:
        model_type = models.mmdet.faster_rcnn  # noqa: F405
        backbone = model_type.backbones.resnet101_fpn_2x
    if selection == 4:
        model_type = models.mmdet.yolox  # noqa: F405
        backbone = model_type.backbones.yolox_s_8x8
    return model_type, backbone


@pytest.mark.parametrize("selection", [0, 1, 2, 4])
def test_getting_started_sequence(selection, tmp_path, no_network):
    set_seed(0)  # noqa: F405
    parser = parsers.VOCBBoxParser(annotations_dir=DATA / "fridge" / "annotations",  # noqa: F405
                                   images_dir=DATA / "fridge" / "images")
    train_records, valid_records = parser.parse()
    assert (len(train_records), len(valid_records)) == (5, 1)  # 80/20, rounded
    assert parser.class_map.get_classes() == ["can", "carton", "milk_bottle", "water_bottle"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Normalize() says once that it does nothing
        train_tfms = tfms.A.Adapter([*tfms.A.aug_tfms(size=SIZE, presize=96), tfms.A.Normalize()])  # noqa: F405
        valid_tfms = tfms.A.Adapter([*tfms.A.resize_and_pad(SIZE), tfms.A.Normalize()])  # noqa: F405
    train_ds = Dataset(train_records, train_tfms)  # noqa: F405
    valid_ds = Dataset(valid_records, valid_tfms)  # noqa: F405
    samples = [train_ds[0] for _ in range(3)]
    fig = show_samples(samples, ncols=3)  # noqa: F405
    show_samples(samples, parser.class_map, ncols=3)  # noqa: F405  (a class map where names go)
    show_samples(samples, class_map=parser.class_map, ncols=3)  # noqa: F405  (IceVision's keyword)
    with pytest.raises(DataError, match="autofix"):  # noqa: F405
        parser.parse(autofix=False)
    assert [t.get_text() for t in fig.axes[0].texts][0].split()[0] in parser.class_map.names

    model_type, backbone = icevision_selection(selection)
    model = model_type.model(backbone=backbone(pretrained=False), num_classes=len(parser.class_map))
    assert model.num_classes == 4 and model.preset.aliases == (f"{model_type.arch}.{backbone.backbone_name}",)

    train_dl = model_type.train_dl(train_ds, batch_size=2, num_workers=0, shuffle=True)
    valid_dl = model_type.valid_dl(valid_ds, batch_size=2, num_workers=0, shuffle=False)
    model_type.show_batch(first(valid_dl), ncols=4)  # noqa: F405
    images, targets = first(valid_dl)  # noqa: F405
    # the model's own letterbox fill: 114 for YOLOX, the ImageNet mean (0 after normalisation) otherwise
    assert valid_dl.dataset.tfms.pad_value == tuple(float(v) for v in model.preset.pad_value)

    metrics = [COCOMetric(metric_type=COCOMetricType.bbox)]  # noqa: F405
    learn = model_type.fastai.learner(dls=[train_dl, valid_dl], model=model, metrics=metrics, path=tmp_path)
    assert [m.name for m in learn.metrics] == ["AP", "AP50"]
    assert len(learn.splitter(model)) == 3  # parameter groups: backbone, neck, head
    learn.freeze()  # IceVision's meaning: only the head trains (norm layers stay trainable, fastai's train_bn)
    from fastai.torch_core import norm_types

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    head = {id(p) for p in model.head.parameters()}
    norms = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters()}
    assert head <= trainable and trainable - norms <= head
    learn.unfreeze()
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert len(learn.recorder.values) == 1 and np.isfinite(learn.recorder.values[-1][0])

    # one epoch leaves scores below the heads' own score_thr (0.05 for RetinaNet and VFNet): keep every
    # detection, so that the comparisons below compare boxes
    stack = contextlib.ExitStack()
    stack.enter_context(score_threshold(model, 0.0))
    model_type.show_results(model, valid_ds, detection_threshold=0.0)
    infer_dl = model_type.infer_dl(valid_ds, batch_size=4, shuffle=False)
    preds = model_type.predict_from_dl(model, infer_dl, keep_images=True, detection_threshold=0.0)
    assert len(preds) == 1 and preds[0]["record"] is valid_records[0] and preds[0]["image"].shape[2] == 3
    show_preds(preds=preds[:4])  # noqa: F405
    direct = model_type.predict(model, valid_ds, detection_threshold=0.0)
    assert len(direct[0]["boxes"]) > 0
    np.testing.assert_allclose(direct[0]["boxes"], preds[0]["boxes"], atol=1e-4)

    records, losses_preds, stats = model_type.interp.plot_top_losses(model, train_ds, sort_by="loss_total", n_samples=2)
    totals = [p["losses"]["loss_total"] for p in losses_preds]
    assert sorted(r.filepath for r in records) == sorted(r.filepath for r in train_records)
    assert totals == sorted(totals, reverse=True) and stats["loss_total"]["max"] == totals[0]
    assert set(stats) == set(losses_preds[0]["losses"]) and "loss_cls" in stats  # mmdet's loss names
    with pytest.raises(ModelError, match="this model's losses are"):  # noqa: F405
        model_type.interp.plot_top_losses(model, train_ds, sort_by="loss_classifier")

    ckpt = tmp_path / "model_checkpoint.pth"
    save_icevision_checkpoint(model, model_name=f"mmdet.{model_type.arch}",  # noqa: F405
                              backbone_name=backbone.backbone_name, img_size=SIZE,
                              classes=parser.class_map.get_classes(), filename=ckpt)
    loaded = model_from_checkpoint(ckpt)  # noqa: F405
    with pytest.warns(UserWarning, match="leaving out 'background'"):
        model_from_checkpoint(ckpt, classes=["background", *parser.class_map.get_classes()])  # noqa: F405
    assert loaded["model_type"] is model_type and loaded["backbone"].preset == backbone.preset
    assert loaded["class_map"].get_classes() == parser.class_map.get_classes() and loaded["img_size"] == SIZE

    infer_tfms = tfms.A.Adapter([*tfms.A.resize_and_pad(loaded["img_size"])])  # noqa: F405
    img = iv.load_image(valid_records[0].filepath)
    stack.enter_context(score_threshold(loaded["model"], 0.0))
    pred_dict = loaded["model_type"].end2end_detect(img, infer_tfms, loaded["model"], class_map=loaded["class_map"],
                                                    detection_threshold=0.0)
    det = pred_dict["detection"]
    assert len(det["bboxes"]) == len(direct[0]["boxes"]) > 0
    assert pred_dict["img"].size == (img.shape[1], img.shape[0])
    # boxes in the original image, equal to the trained model's own prediction of the same image
    np.testing.assert_allclose(det["bboxes"], direct[0]["boxes"], atol=1e-3)
    assert det["labels"] == [parser.class_map.names[i] for i in det["label_ids"]]
    with pytest.warns(UserWarning), pytest.raises(ModelError, match="starts with 'background'"):  # noqa: F405
        loaded["model_type"].end2end_detect(img, infer_tfms, loaded["model"], detection_threshold=0.0,
                                            class_map=ClassMap(["background", *parser.class_map.names]))  # noqa: F405
    assert (det["bboxes"][:, 2] <= img.shape[1] + 1e-3).all() and (det["bboxes"][:, 3] <= img.shape[0] + 1e-3).all()
    stack.close()


def test_backbones_come_from_the_registry_and_calls_never_mutate():
    from fpn_lab.models.registry import archs, get_preset, icevision_backbones

    for arch in archs():
        model_type = getattr(models.mmdet, arch)  # noqa: F405
        assert sorted(dir(model_type.backbones)) == sorted(icevision_backbones(arch))
        for b in model_type.backbones:
            preset = get_preset(b.preset)
            assert vars(b) == {"model_name": arch, "backbone_name": b.backbone_name, "preset": preset.name,
                               "config_path": preset.config, "weights_url": preset.weights_url, "pretrained": True}
            off = b(pretrained=False)
            assert off is not b and off.pretrained is False and b.pretrained is True
            assert getattr(model_type.backbones, b.backbone_name).pretrained is True


def test_unknown_names_say_what_is_offered():
    with pytest.raises(ModelError, match="resnet50_fpn_mstrain_2x"):  # noqa: F405
        models.mmdet.vfnet.backbones.resnet50_fpn_mstrain_3x  # noqa: B018,F405
    with pytest.raises(ModelError, match="instance masks"):  # noqa: F405
        models.mmdet.mask_rcnn  # noqa: B018,F405
    with pytest.raises(ModelError, match="models.mmdet.efficientdet"):  # noqa: F405
        models.ross  # noqa: B018,F405
    yolox = models.mmdet.yolox  # noqa: F405
    with pytest.raises(ModelError, match="fastai only"):  # noqa: F405
        yolox.lightning  # noqa: B018
    with pytest.raises(DataError, match="box detectors only"):  # noqa: F405
        parsers.COCOMaskParser  # noqa: B018,F405
    with pytest.raises(ModelError, match="belongs to models.mmdet.vfnet"):  # noqa: F405
        vfnet_backbone = models.mmdet.vfnet.backbones.resnet50_fpn_1x(pretrained=False)  # noqa: F405
        yolox.model(backbone=vfnet_backbone, num_classes=2)
    with pytest.raises(ModelError, match="unknown arguments"):  # noqa: F405
        yolox.model(backbone=yolox.backbones.yolox_tiny_8x8(pretrained=False), num_classes=2, img_size=64)


def test_cfg_options_reach_the_mmdet_config_and_typos_are_errors():
    yolox = models.mmdet.yolox  # noqa: F405
    bb = yolox.backbones.yolox_tiny_8x8(pretrained=False)
    model = yolox.model(backbone=bb, num_classes=2, cfg_options={"model.test_cfg.score_thr": 0.25})
    assert model.cfg.model.test_cfg.score_thr == 0.25 and model.detector.bbox_head.test_cfg.score_thr == 0.25
    with pytest.raises(ModelError, match="score_thr"):  # noqa: F405
        yolox.model(backbone=bb, num_classes=2, cfg_options={"model.test_cfg.score_thresh": 0.25})


def test_parse_without_splitter_is_icevision_random_80_20(bccd_records):
    parser = parsers.VOCBBoxParser(DATA / "bccd" / "annotations", DATA / "bccd" / "images")  # noqa: F405
    train, valid = parser.parse()
    assert (len(train), len(valid)) == (291, 73)  # round(0.8 * 364)
    assert not {r.filepath for r in train} & {r.filepath for r in valid}
    again, _ = parsers.VOCBBoxParser(DATA / "bccd" / "annotations", DATA / "bccd" / "images").parse()  # noqa: F405
    assert [r.filepath for r in again] == [r.filepath for r in train]  # seeded: the same split every time
    (everything,) = parser.parse(SingleSplitSplitter())  # noqa: F405
    assert len(everything) == 364 and all(r.class_map is parser.class_map for r in everything)


def test_normalize_is_a_no_op_that_says_so_once(bccd_records):
    from fpn_lab.icevision import adapter as tfms_module

    tfms_module._NORMALIZE_WARNED.clear()
    with pytest.warns(UserWarning, match="does nothing"):
        tfms.A.Normalize()  # noqa: F405
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfms.A.Normalize()  # noqa: F405  (only once)
    _, _, test = bccd_records
    plain = resize_and_pad(320, pad_value=(114, 114, 114))  # noqa: F405
    adapted = tfms.A.Adapter([*tfms.A.resize_and_pad(320), tfms.A.Normalize()])  # noqa: F405
    a, _ = Dataset(test[:2], plain)[1]  # noqa: F405
    b, _ = Dataset(test[:2], adapted)[1]  # noqa: F405
    np.testing.assert_array_equal(a, b)  # the same uint8 pixels: the model's preprocessor normalises once


def test_adapter_refuses_what_it_cannot_do():
    import albumentations as A

    with pytest.raises(ParamsError, match="exactly one"):  # noqa: F405
        tfms.A.Adapter([tfms.A.Normalize()])  # noqa: F405
    with pytest.raises(ParamsError, match="exact letterbox"):  # noqa: F405
        tfms.A.Adapter([*tfms.A.resize_and_pad(64), A.Blur()])  # noqa: F405
    with pytest.raises(ParamsError, match="rgb_shift"):  # noqa: F405
        tfms.A.aug_tfms(64, rgb_shift=True)  # noqa: F405
    with pytest.raises(ParamsError, match="'lighting' is IceVision's"):  # noqa: F405
        tfms.A.aug_tfms(64, lighting=None)  # noqa: F405
    aug = tfms.A.Adapter([*tfms.A.aug_tfms(64), A.ToGray(p=1.0)])  # noqa: F405  (extra steps join the augmentation)
    assert type(aug.pipeline.transforms[-1]).__name__ == "ToGray"


def test_class_map_background_warns():
    with pytest.warns(UserWarning, match="no background class"):
        ClassMap(["a", "b"], background=0)  # noqa: F405
    with pytest.warns(UserWarning, match="no background class"):
        ClassMap(["background", "a"])  # noqa: F405
    with pytest.raises(ParamsError, match="boxes only"):  # noqa: F405
        COCOMetric(metric_type=COCOMetricType.mask)  # noqa: F405
