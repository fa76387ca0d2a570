"""IceVision's getting-started API on fpn_lab: ``models.mmdet.<type>``, ``parsers``, ``tfms.A``,
``COCOMetric``, ``show_preds``, ``model_from_checkpoint``... (``from fpn_lab.all import *`` brings
them, beside fpn_lab's own names).

Everything here is a thin layer over fpn_lab's package: the registry generates the model types
(:mod:`fpn_lab.icevision.model_types`), the transforms build fpn_lab's letterbox and augmentation
(:mod:`fpn_lab.icevision.adapter`), the metric asks the learner for COCO columns
(:mod:`fpn_lab.icevision.metric`). ``docs/migrating_from_icevision.md`` lists each IceVision name
beside its fpn_lab counterpart and what differs.
"""

from __future__ import annotations

from types import SimpleNamespace

from fpn_lab.data.parsers import COCOBBoxParser, VOCBBoxParser
from fpn_lab.icevision.metric import COCOMetric, COCOMetricType
from fpn_lab.icevision.adapter import A
from fpn_lab.icevision.model_types import (
    ModelType, model_choice, model_from_checkpoint, models, save_icevision_checkpoint,
)



class IceVisionCOCOBBoxParser(COCOBBoxParser):
    """:class:`~fpn_lab.data.parsers.COCOBBoxParser` with IceVision's argument names
    (``annotations_filepath``, ``img_dir``); the same parser otherwise."""

    def __init__(self, annotations_filepath, img_dir, **kwargs):
        super().__init__(annotations_filepath, img_dir, **kwargs)


class _Parsers(SimpleNamespace):
    """``parsers``: the box parsers; IceVision's mask and keypoint parsers raise with the reason."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        from fpn_lab.errors import DataError

        why = ("fpn_lab trains box detectors only (no masks or keypoints)" if "Mask" in name or "Keypoint" in name
               else "not an fpn_lab parser")
        raise DataError(f"parsers.{name}: {why}. Parsers: VOCBBoxParser (Pascal VOC XML) and COCOBBoxParser (COCO "
                        "JSON); any other source can be turned into Record objects directly.")


#: ``parsers.VOCBBoxParser(annotations_dir=..., images_dir=...)``,
#: ``parsers.COCOBBoxParser(annotations_filepath=..., img_dir=...)``.
parsers = _Parsers(VOCBBoxParser=VOCBBoxParser, COCOBBoxParser=IceVisionCOCOBBoxParser)
#: ``tfms.A.Adapter``, ``tfms.A.aug_tfms``, ``tfms.A.resize_and_pad``, ``tfms.A.Normalize``.
tfms = SimpleNamespace(A=A)


def show_preds(preds, ncols: int = 2, threshold: float = 0.0, class_map=None):
    """Draw predictions from ``model_type.predict`` / ``predict_from_dl`` on their original images.

    Each prediction's own ``image`` is used when it was kept (``keep_images=True``), else its
    record's file is decoded. Detections below ``threshold`` are left out (the predictions were
    already cut at the ``detection_threshold`` they were made with).
    """
    from fpn_lab.data.images import load_image
    from fpn_lab.icevision.model_types import _names
    from fpn_lab.viz.draw import show_predictions

    preds = list(preds)
    records = [p["record"] for p in preds]
    images = [p["image"] if "image" in p else load_image(r.filepath) for p, r in zip(preds, records)]
    num_classes = 1 + max((int(p["labels"].max()) for p in preds if len(p["labels"])), default=0)
    names = _names(class_map, records, num_classes)
    return show_predictions(images, preds, names, titles=[r.filepath.name for r in records], threshold=threshold,
                            ncols=ncols)


__all__ = ["COCOMetric", "COCOMetricType", "ModelType", "model_choice", "model_from_checkpoint", "models", "parsers",
           "save_icevision_checkpoint", "show_preds", "tfms"]
