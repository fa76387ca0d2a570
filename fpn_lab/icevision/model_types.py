"""IceVision's ``models.mmdet.<type>`` namespace, generated from fpn_lab's one model registry.

``models.mmdet.vfnet``, ``.retinanet``, ``.fcos``, ``.faster_rcnn``, ``.efficientdet`` and ``.yolox`` (every
architecture in the catalogue) are
:class:`ModelType` objects; ``model_type.backbones.<IceVision name>`` is a :class:`Backbone` for
each preset whose alias is ``"<type>.<IceVision name>"``
(:func:`fpn_lab.models.registry.icevision_backbones`): there is no second list of models here.

The functions keep IceVision's names and arguments and call fpn_lab's own
(:func:`~fpn_lab.models.build.build_model`, :func:`~fpn_lab.learner.learner.make_learner`,
:func:`~fpn_lab.inference.predict_dataset`...). Where IceVision's meaning cannot hold on
MMDetection 3 the function says so in its error; ``docs/migrating_from_icevision.md`` lists every
difference.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from fpn_lab.errors import DataError, ModelError, did_you_mean

#: IceVision model families fpn_lab does not offer, with the nearest thing it does.
NOT_OFFERED = {
    "mask_rcnn": "instance masks are not supported (boxes only)",
    "ssd": "SSD has no FPN neck: use models.mmdet.yolox",
    "yolof": "YOLOF has no FPN neck: use models.mmdet.yolox",
    "detr": "DETR has no FPN neck", "deformable_detr": "not in fpn_lab's catalogue",
    "fsaf": "not in fpn_lab's catalogue", "sabl": "not in fpn_lab's catalogue",
    "centripetalnet": "not in fpn_lab's catalogue", "sparse_rcnn": "not in fpn_lab's catalogue",
    "yolact": "instance masks are not supported", "scnet": "instance masks are not supported",
    "cornernet": "not in fpn_lab's catalogue",
}
#: IceVision libraries other than mmdet.
OTHER_LIBRARIES = {
    "torchvision": "torchvision models are not offered: use models.mmdet.retinanet (RetinaNet R50 FPN)",
    "ross": "ross's effdet is not offered: use models.mmdet.efficientdet (EfficientDet-D0 on mmdet, backbone d0)",
    "ultralytics": "YOLOv5 is not offered: use models.mmdet.yolox",
}
MODEL_ARGS = ("cfg_options", "neck", "neck_args", "weights", "class_map", "device", "channels_last")


@dataclasses.dataclass(frozen=True)
class Backbone:
    """IceVision's backbone config: one preset of a model type, with the pretrained choice.

    ``backbone.__dict__`` shows ``model_name`` (the type, e.g. ``"vfnet"``), ``backbone_name``
    (IceVision's name), ``preset`` (fpn_lab's name), ``config_path`` (mmdet config, relative to
    mmdet's ``configs/``), ``weights_url`` (mmdet's COCO checkpoint) and ``pretrained``.
    Calling it returns a new object; the shared preset is never changed.
    """

    model_name: str
    backbone_name: str
    preset: str
    config_path: str
    weights_url: str
    pretrained: bool | str = True

    def __call__(self, pretrained: bool | str = True) -> Backbone:
        """A copy with ``pretrained``: True (mmdet's COCO weights, downloaded), False (from scratch)
        or fpn_lab's ``"imagenet"`` (the config's ImageNet backbone only).

        Raises:
            ModelError: another value (:func:`~fpn_lab.models.build.normalize_pretrained`).
        """
        from fpn_lab.models.build import normalize_pretrained

        mode = normalize_pretrained(pretrained)
        return dataclasses.replace(self, pretrained={"none": False, "coco": True}.get(mode, mode))


class Backbones:
    """``model_type.backbones``: attribute access by IceVision name; ``dir()`` lists them."""

    def __init__(self, arch: str):
        from fpn_lab.models.registry import get_preset, icevision_backbones

        self._arch = arch
        self._items = {}
        for name, preset_name in icevision_backbones(arch).items():
            p = get_preset(preset_name)
            self._items[name] = Backbone(arch, name, p.name, p.config, p.weights_url)

    def __getattr__(self, name: str) -> Backbone:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._items:
            return self._items[name]
        raise ModelError(f"models.mmdet.{self._arch}.backbones has no {name!r}.{did_you_mean(name, self._items)} "
                         f"Offered (IceVision's names that mmdet 3.3 still ships): {', '.join(sorted(self._items))}.")

    def __dir__(self):
        return sorted(self._items)

    def __iter__(self):
        return iter(self._items.values())

    def __repr__(self) -> str:
        return f"<backbones of models.mmdet.{self._arch}: {', '.join(sorted(self._items))}>"


class _Namespace:
    """A small attribute namespace (``model_type.fastai``, ``model_type.interp``)."""

    def __init__(self, **items):
        self.__dict__.update(items)


class ModelType:
    """IceVision's ``models.mmdet.<type>``: build, load data, train, predict and show for one architecture."""

    def __init__(self, arch: str):
        self.arch = arch
        self.backbones = Backbones(arch)
        self.fastai = _Namespace(learner=self._learner)
        self.interp = _Namespace(plot_top_losses=self.plot_top_losses)

    def __repr__(self) -> str:
        return f"models.mmdet.{self.arch}"

    @property
    def lightning(self):
        """IceVision's PyTorch Lightning adapter is not offered: raises with the alternative."""
        raise ModelError(f"models.mmdet.{self.arch}.lightning: fpn_lab trains through fastai only; use "
                         f"models.mmdet.{self.arch}.fastai.learner(dls=[train_dl, valid_dl], model=model, "
                         "metrics=...).")

    # -- model ------------------------------------------------------------------------------
    def model(self, backbone: Backbone, num_classes: int, **extra_args):
        """Build the detector: IceVision's ``model_type.model(backbone=..., num_classes=...)``.

        Args:
            backbone: ``model_type.backbones.<name>(pretrained=True|False)``; pretrained loads
                mmdet's COCO weights (downloaded once into the weights cache; offline it fails
                with the URL and the path to put the file at).
            num_classes: object classes, ``len(parser.class_map)`` (no background class).
            extra_args: ``cfg_options`` (``{"model.test_cfg.score_thr": 0.3}``, applied to the
                mmdet config), and fpn_lab's ``neck``, ``neck_args``, ``weights`` (a local
                checkpoint), ``class_map``, ``device`` (default ``"cpu"``) and ``channels_last``
                (default True; :func:`~fpn_lab.models.build.place_model`).

        Returns:
            :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`.

        Raises:
            ModelError: a backbone of another model type, an unknown extra argument.
        """
        from fpn_lab.models.build import build_model, place_model

        if not isinstance(backbone, Backbone):
            raise ModelError(f"models.mmdet.{self.arch}.model(backbone=...) takes one of models.mmdet.{self.arch}."
                             f"backbones.* (called or not); got {type(backbone).__name__} {backbone!r}.")
        if backbone.model_name != self.arch:
            raise ModelError(f"backbone {backbone.model_name}.backbones.{backbone.backbone_name} belongs to "
                             f"models.mmdet.{backbone.model_name}, not models.mmdet.{self.arch}; pick one of "
                             f"models.mmdet.{self.arch}.backbones ({', '.join(dir(self.backbones))}).")
        unknown = sorted(set(extra_args) - set(MODEL_ARGS))
        if unknown:
            raise ModelError(f"models.mmdet.{self.arch}.model got unknown arguments {unknown}; it takes backbone, "
                             f"num_classes and {list(MODEL_ARGS)}. (IceVision's checkpoints_path / force_download: "
                             "fpn_lab caches weights in FPN_LAB_WEIGHTS or ~/.cache/fpn_lab/weights.)")
        class_map = extra_args.get("class_map")
        model = build_model(backbone.preset, num_classes=num_classes, pretrained=backbone.pretrained,
                            weights=extra_args.get("weights"), neck=extra_args.get("neck"),
                            neck_args=extra_args.get("neck_args"), cfg_options=extra_args.get("cfg_options"),
                            class_names=getattr(class_map, "names", class_map))
        return place_model(model, extra_args.get("device", "cpu"), channels_last=extra_args.get("channels_last", True))

    # -- data ---------------------------------------------------------------------------------
    def _pad_value(self):
        """The letterbox fill every preset of this type uses, or ``None`` when they differ."""
        pads = {tuple(float(v) for v in b_preset.pad_value) for b_preset in self._presets()}
        return pads.pop() if len(pads) == 1 else None

    def _presets(self):
        from fpn_lab.models.registry import get_preset

        return [get_preset(b.preset) for b in self.backbones]

    def _dl(self, dataset, batch_size: int, num_workers: int, shuffle: bool, drop_last: bool, seed):
        from fpn_lab.data.dataloaders import Dataset, make_dataloader
        from fpn_lab.icevision.adapter import for_model

        if not isinstance(dataset, Dataset):
            raise DataError(f"models.mmdet.{self.arch} dataloaders take a Dataset(records, tfms); got "
                            f"{type(dataset).__name__}.")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise DataError(f"batch_size must be a positive int; got {batch_size!r}.")
        pad = self._pad_value()
        if pad is not None:
            dataset = for_model(dataset, pad)
        return make_dataloader(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
                               seed=seed)

    def train_dl(self, dataset, batch_size: int = 8, num_workers: int = 0, shuffle: bool = True,
                 drop_last: bool = True, seed: int | None = None):
        """Training DataLoader (fastai's, seeded; see :class:`~fpn_lab.data.dataloaders.DetectionDataLoader`).

        Unlike IceVision the incomplete last batch is dropped by default (a batch of one image
        breaks BatchNorm); ``drop_last=False`` keeps it. ``seed`` fixes shuffling and augmentation
        (default: from Python's ``random``, seeded by ``set_seed``).
        """
        if drop_last and batch_size > len(dataset):
            raise DataError(f"batch_size {batch_size} is larger than the training set ({len(dataset)} images); with "
                            f"the last incomplete batch dropped no batch would be left. Use batch_size <= "
                            f"{len(dataset)}.")
        return self._dl(dataset, batch_size, num_workers, shuffle, drop_last, seed)

    def valid_dl(self, dataset, batch_size: int = 8, num_workers: int = 0, shuffle: bool = False):
        """Validation DataLoader: every image, in the dataset's order (``shuffle=True`` is refused:
        drawings and predictions follow the records' order)."""
        if shuffle:
            raise DataError("valid_dl(shuffle=True): validation keeps the dataset's order; pass shuffle=False.")
        return self._dl(dataset, batch_size, num_workers, False, False, None)

    def infer_dl(self, dataset, batch_size: int = 8, num_workers: int = 0, shuffle: bool = False):
        """Inference DataLoader for :meth:`predict_from_dl` (same rules as :meth:`valid_dl`)."""
        return self.valid_dl(dataset, batch_size, num_workers, shuffle)

    def show_batch(self, batch, ncols: int = 1, class_map=None, n: int = 8):
        """Draw a batch (``first(valid_dl)``) as the model receives it: letterboxed, boxes in network
        pixels (:func:`fpn_lab.viz.draw.show_batch`)."""
        from fpn_lab.viz.draw import show_batch

        return show_batch(batch, getattr(class_map, "names", class_map), n=n, ncols=ncols)

    # -- training -----------------------------------------------------------------------------
    def _learner(self, dls, model, metrics=None, cbs=None, class_map=None, **learner_kwargs):
        """IceVision's ``model_type.fastai.learner(dls=[train_dl, valid_dl], model=model, metrics=...)``.

        The parameter groups are backbone, neck and head (fastai's ``splitter``), so
        ``learn.freeze()`` trains the head alone and ``learn.fine_tune(n, lr, freeze_epochs=1)``
        means what it meant in IceVision. ``COCOMetric`` in ``metrics`` becomes the AP and AP50
        columns, computed once per validation pass; other fastai metrics pass through.
        ``learner_kwargs`` go to :func:`~fpn_lab.learner.learner.make_learner` (``opt``, ``wd``,
        ``ema``, ``no_aug_epochs``, ``checkpoint``, ``path``) and on to fastai's ``Learner``.

        Raises:
            DataError: ``dls`` is not two dataloaders, or the validation records carry different class maps.
        """
        import torch
        from fastai.data.core import DataLoaders

        from fpn_lab.icevision.adapter import for_model
        from fpn_lab.icevision.metric import COCOMetric
        from fpn_lab.learner.learner import make_learner

        if isinstance(dls, DataLoaders):
            train_dl, valid_dl = dls.train, dls.valid
        elif isinstance(dls, Sequence) and len(dls) == 2:
            train_dl, valid_dl = dls
        else:
            raise DataError(f"learner(dls=...) takes [train_dl, valid_dl] or a fastai DataLoaders; got {dls!r}.")
        for dl in (train_dl, valid_dl):  # the model's own letterbox fill (the type's may differ per preset)
            dl.dataset = for_model(dl.dataset, model.pad_value)
        device = next(model.parameters()).device
        data = DataLoaders(train_dl, valid_dl, device=torch.device(device))
        data.n_inp = 1
        class_map = class_map or _class_map_of(valid_dl.dataset.records, model.num_classes)
        coco = [m for m in (metrics or []) if isinstance(m, COCOMetric)]
        others = [m for m in (metrics or []) if not isinstance(m, COCOMetric)]
        keys = tuple(dict.fromkeys(k for m in coco for k in m.keys))
        return make_learner(data, model, class_map, coco=keys or False, metrics=others, cbs=list(cbs or []),
                            **learner_kwargs)

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, model, dataset, detection_threshold: float = 0.5, keep_images: bool = False,
                batch_size: int = 8) -> list[dict]:
        """Predict every record of ``dataset`` (with its letterbox only, no augmentation).

        Returns one dict per record, in order: ``boxes`` ``float32[M, 4]`` xyxy in the original
        image's pixels, ``scores`` ``float32[M]``, ``labels`` ``int64[M]`` (0-based), only the
        detections scoring >= ``detection_threshold``; ``record`` (the ground truth), and
        ``image`` (``uint8[H, W, 3]``, the original image) when ``keep_images``.
        """
        from fpn_lab.inference import letterboxed_for, predict_dataset

        _check_threshold(detection_threshold)
        ds = letterboxed_for(model, dataset)
        preds = predict_dataset(model, ds, batch_size=batch_size)
        return [_prediction(p, r, detection_threshold, ds.image(i) if keep_images else None)
                for i, (p, r) in enumerate(zip(preds, ds.records))]

    def predict_from_dl(self, model, infer_dl, keep_images: bool = False,
                        detection_threshold: float = 0.5) -> list[dict]:
        """Predict the batches of ``infer_dl`` (from :meth:`infer_dl`); the same dicts as :meth:`predict`."""
        from fpn_lab.icevision.adapter import for_model
        from fpn_lab.inference import predict_batches

        _check_threshold(detection_threshold)
        ds = for_model(infer_dl.dataset, model.pad_value)
        if ds is not infer_dl.dataset:
            infer_dl.dataset = ds
        by_id = {r.record_id: (i, r) for i, r in enumerate(ds.records)}
        order = []

        def batches():
            for images, targets in infer_dl:
                order.extend(t["record_id"] for t in targets)
                yield images, [t["geometry"] for t in targets]

        preds = predict_batches(model, batches())
        out = []
        for rid, p in zip(order, preds):
            i, r = by_id[rid]
            out.append(_prediction(p, r, detection_threshold, ds.image(i) if keep_images else None))
        return out

    def show_results(self, model, dataset, detection_threshold: float = 0.5, num_samples: int = 6, ncols: int = 2,
                     class_map=None):
        """Ground truth beside predictions (score >= ``detection_threshold``) for the first
        ``num_samples`` records, in original pixels. ``ncols`` is accepted for IceVision's
        signature; the drawing is always ground truth | predictions per row."""
        from fpn_lab.data.dataloaders import Dataset
        from fpn_lab.viz.draw import show_results

        ds = Dataset(dataset.records[:num_samples], dataset.tfms, cache_images=False)
        preds = self.predict(model, ds, detection_threshold=0.0, keep_images=True)
        names = _names(class_map, ds.records, model.num_classes)
        return show_results([p["image"] for p in preds], ds.records, preds, names, threshold=detection_threshold)

    def end2end_detect(self, img, transforms, model, class_map, detection_threshold: float = 0.5,
                       display_label: bool = True, display_bbox: bool = True, display_score: bool = True,
                       return_img: bool = True, return_as_pil_img: bool = True) -> dict:
        """Detect objects in one image and return them in the original image's pixels.

        Args:
            img: a PIL image, a ``uint8[H, W, 3]`` RGB array, or an image file path.
            transforms: the validation transform (``tfms.A.Adapter([*tfms.A.resize_and_pad(size), ...])``).
            class_map: the model's :class:`~fpn_lab.core.class_map.ClassMap` (or class names).

        Returns:
            ``{"detection": {"bboxes": float32[M, 4] xyxy, "scores": float32[M], "label_ids":
            int64[M], "labels": [names]}, "img": the image with the detections drawn (PIL, or an
            array when not ``return_as_pil_img``; ``None`` without ``return_img``), "width", "height"}``.
        """
        from fpn_lab.data.images import load_image
        from fpn_lab.data.transforms import Letterbox, check_image_array
        from fpn_lab.inference import predict_batches

        _check_threshold(detection_threshold)
        if not isinstance(transforms, Letterbox):
            raise DataError(f"end2end_detect needs the validation transform (tfms.A.Adapter([*tfms.A.resize_and_pad("
                            f"size), ...])); got {type(transforms).__name__}: training augmentation would move the "
                            "boxes.")
        if hasattr(img, "convert"):  # PIL
            img = np.asarray(img.convert("RGB"))
        elif not isinstance(img, np.ndarray):
            img = load_image(img)
        check_image_array(img, "end2end_detect(img)")
        spec = getattr(transforms, "adapter_spec", None)
        letterbox = (transforms if spec is None or spec.pad_is_set
                     else Letterbox(transforms.size, model.pad_value, transforms.position))
        import torch

        boxed, _, g = letterbox(img)
        (pred,) = predict_batches(model, [(torch.from_numpy(boxed[None]).permute(0, 3, 1, 2).contiguous(), [g])])
        names = _names(class_map, (), model.num_classes)
        keep = pred["scores"] >= detection_threshold
        det = {"bboxes": pred["boxes"][keep], "scores": pred["scores"][keep], "label_ids": pred["labels"][keep],
               "labels": [names[int(i)] for i in pred["labels"][keep]]}
        drawn = None
        if return_img:
            drawn = _draw_pil(img, det, display_label, display_bbox, display_score)
            drawn = drawn if return_as_pil_img else np.asarray(drawn)
        return {"detection": det, "img": drawn, "width": img.shape[1], "height": img.shape[0]}

    def plot_top_losses(self, model, dataset, sort_by: str = "loss_total", n_samples: int = 5,
                        batch_size: int = 1, detection_threshold: float = 0.5):
        """IceVision's ``interp.plot_top_losses``: the images the model does worst on, by loss.

        Each image's losses come from one forward pass of that image alone with every norm layer
        in eval mode (the validation pass's losses, :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel`),
        so they do not depend on which images share a batch. ``sort_by`` is ``"loss_total"`` (the
        summed loss) or one of the model's loss terms (mmdet's names, e.g. ``loss_cls``,
        ``loss_bbox``, ``loss_obj`` for YOLOX). The top ``n_samples`` are drawn, ground truth beside
        predictions (score >= ``detection_threshold``).

        Returns:
            ``(records, predictions, losses_stats)`` sorted worst first: the records, their
            prediction dicts (as :meth:`predict`, plus ``losses``: ``{name: float}``), and per loss
            name ``{"min", "max", "mean", "1st_quantile", "median", "3rd_quantile"}`` over the dataset.

        Raises:
            ModelError: ``sort_by`` names no loss of this model.
        """
        from fpn_lab.inference import image_losses, letterboxed_for
        from fpn_lab.viz.draw import show_results

        _check_threshold(detection_threshold)
        if batch_size != 1:
            raise ModelError("plot_top_losses computes each image's loss alone (batch_size=1); a batch's mmdet loss is "
                             "one number for all its images.")
        ds = letterboxed_for(model, dataset)
        rows = [(i, losses, pred) for i, (losses, pred) in image_losses(model, ds).items()]
        names = sorted(rows[0][1]) if rows else []
        if sort_by not in names:
            raise ModelError(f"plot_top_losses(sort_by={sort_by!r}): this model's losses are {names}.")
        rows.sort(key=lambda r: -r[1][sort_by])
        stats = {k: _stats([r[1][k] for r in rows]) for k in names}
        records, preds = [], []
        for i, losses, p in rows:
            pr = _prediction(p, ds.records[i], 0.0, None)
            pr["losses"] = losses
            records.append(ds.records[i])
            preds.append(pr)
        top = rows[:n_samples]
        if top:
            show_results([ds.image(i) for i, _, _ in top], [ds.records[i] for i, _, _ in top], [p for _, _, p in top],
                         _names(None, ds.records, model.num_classes), threshold=detection_threshold,
                         titles=[f"{ds.records[i].filepath.name}: {sort_by} {losses[sort_by]:.3f}"
                                 for i, losses, _ in top])
        return records, preds, stats


class MMDetModels:
    """``models.mmdet``: one :class:`ModelType` per architecture of the registry."""

    def __init__(self):
        self._types: dict[str, ModelType] = {}

    def _archs(self) -> list[str]:
        from fpn_lab.models.registry import archs

        return archs()

    def __getattr__(self, arch: str) -> ModelType:
        if arch.startswith("_"):
            raise AttributeError(arch)
        if arch not in self._types:
            if arch not in self._archs():
                why = f" IceVision's {arch}: {NOT_OFFERED[arch]}." if arch in NOT_OFFERED else ""
                raise ModelError(f"models.mmdet has no {arch!r}.{why}{did_you_mean(arch, self._archs())} "
                                 f"Offered: {', '.join(self._archs())}.")
            self._types[arch] = ModelType(arch)
        return self._types[arch]

    def __dir__(self):
        return self._archs()


class Models:
    """``models``: ``models.mmdet``; IceVision's other libraries raise with the alternative."""

    def __init__(self):
        self.mmdet = MMDetModels()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        why = OTHER_LIBRARIES.get(name, "fpn_lab offers MMDetection models only")
        raise ModelError(f"models.{name}: {why}. Use models.mmdet.<type> ({', '.join(self.mmdet._archs())}).")

    def __dir__(self):
        return ["mmdet"]


models = Models()


# -- helpers ------------------------------------------------------------------------------------
def _check_threshold(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ModelError(f"detection_threshold must be a score between 0 and 1; got {value!r}.")


def _prediction(pred: dict, record, threshold: float, image) -> dict:
    keep = pred["scores"] >= threshold
    out = {"boxes": pred["boxes"][keep], "scores": pred["scores"][keep], "labels": pred["labels"][keep],
           "record": record}
    if image is not None:
        out["image"] = image
    return out


def _class_map_of(records, num_classes: int):
    """The class map the parser attached to ``records``; a generic one (with a warning) when none did."""
    from fpn_lab.core.class_map import ClassMap

    maps = {id(r.class_map): r.class_map for r in records if r.class_map is not None}
    if len(maps) > 1:
        raise DataError("the validation records carry different class maps; parse them with one parser or pass "
                        "class_map= to the learner.")
    if maps:
        return next(iter(maps.values()))
    warnings.warn(f"the records carry no class map (they were not made by a parser): classes are named 'class 0'.."
                  f"'class {num_classes - 1}'; pass class_map= to name them.", stacklevel=3)
    return ClassMap([f"class {i}" for i in range(num_classes)])


def _names(class_map, records, num_classes: int) -> list[str]:
    """Class names for a model of ``num_classes`` classes: the given class map's, else the records'.

    Raises:
        ModelError: a class map of another length (e.g. IceVision's list with "background" first,
            which would shift every label by one).
    """
    if class_map is not None:
        names = list(getattr(class_map, "names", class_map))
        if len(names) != num_classes:
            hint = (" It starts with 'background': IceVision's class lists did; fpn_lab's have no background class, "
                    "so leave it out." if names and str(names[0]).casefold() == "background" else "")
            raise ModelError(f"class_map has {len(names)} classes {names} but the model predicts {num_classes}; "
                             f"labels would be named wrongly.{hint} Use the model's own class map "
                             "(model_from_checkpoint(...)['class_map']).")
        return names
    return list(_class_map_of(records, num_classes).names)


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "1st_quantile": float(q1),
            "median": float(med), "3rd_quantile": float(q3)}


def _draw_pil(img: np.ndarray, det: dict, display_label: bool, display_bbox: bool, display_score: bool):
    """The image with the detections drawn (PIL ``ImageDraw``), in original pixels."""
    from PIL import Image, ImageDraw

    from fpn_lab.viz.draw import COLORS

    out = Image.fromarray(img)
    draw = ImageDraw.Draw(out)
    for box, lid, name, score in zip(det["bboxes"], det["label_ids"], det["labels"], det["scores"]):
        color = tuple(int(255 * c) for c in COLORS[int(lid) % len(COLORS)])
        if display_bbox:
            draw.rectangle([float(v) for v in box], outline=color, width=2)
        text = " ".join(([name] if display_label else []) + ([f"{float(score):.2f}"] if display_score else []))
        if text:
            draw.text((float(box[0]) + 2, float(box[1]) + 1), text, fill=color)
    return out


def model_choice(selection) -> tuple[ModelType, Backbone]:
    """``(model_type, backbone)`` for an IceVision ``selection`` index or any preset name or alias,
    as the getting-started notebook's ``if selection == ...`` chain gives them.

    Raises:
        ModelError: an unknown index or name; IceVision's other indices name what they meant and
            what fpn_lab offers (:func:`~fpn_lab.models.registry.get_preset`).
    """
    from fpn_lab.models.registry import get_preset

    preset = get_preset(selection)
    model_type = getattr(models.mmdet, preset.arch)
    backbone = next((b for b in model_type.backbones if b.preset == preset.name), None)
    if backbone is None:
        raise ModelError(f"preset {preset.name!r} has no IceVision backbone name, so models.mmdet.{preset.arch} cannot "
                         "offer it; build it with build_model(...).")
    return model_type, backbone


# -- checkpoints ------------------------------------------------------------------------------
def save_icevision_checkpoint(model, filename, model_name: str | None = None, backbone_name: str | None = None,
                              classes: Sequence[str] | None = None, img_size: int | None = None, meta=None):
    """IceVision's ``save_icevision_checkpoint``: :func:`fpn_lab.checkpoint.save_checkpoint` under its old name.

    ``model_name`` / ``backbone_name`` (IceVision's ``"mmdet.vfnet"``, ``"resnet50_fpn_1x"``)
    are checked against the model, not stored: the checkpoint names its preset itself. ``classes``
    from IceVision code may start with ``"background"``; with one name more than the model's
    classes that entry is left out, with a warning. The source's category ids and the letterbox
    position are taken from the model (set by training), as IceVision's ``classes`` are names only.
    ``meta`` is not stored.

    Raises:
        ModelError: no ``img_size``, names of another model, or classes that do not fit the model.
    """
    from fpn_lab.checkpoint import save_checkpoint
    from fpn_lab.core.class_map import ClassMap

    if img_size is None:
        raise ModelError("save_icevision_checkpoint needs img_size= (the letterbox side the model was trained at).")
    _check_names(model, model_name, backbone_name)
    names = list(classes) if classes is not None else None
    if names and len(names) == model.num_classes + 1 and names[0].casefold() == "background":
        warnings.warn("save_icevision_checkpoint: leaving out 'background' from classes: fpn_lab's models have no "
                      "background class.", stacklevel=2)
        names = names[1:]
    if names is None:
        raise ModelError("save_icevision_checkpoint needs classes= (parser.class_map.get_classes()).")
    if meta:
        warnings.warn("save_icevision_checkpoint: meta is not stored (the checkpoint records fpn_lab's version, the "
                      "preset and the resolved config).", stacklevel=2)
    # IceVision passes names only: the source's category ids and the letterbox position are the model's own
    ids = getattr(model, "category_ids", None) if getattr(model, "class_names", None) == names else None
    return save_checkpoint(filename, model, ClassMap(names, ids), image_size=int(img_size),
                           pad_position=getattr(model, "pad_position", None) or "top_left")


def model_from_checkpoint(filename, model_name: str | None = None, backbone_name: str | None = None,
                          classes: Sequence[str] | None = None, img_size: int | None = None, device: str = "cpu",
                          channels_last: bool = True, **unused) -> dict:
    """IceVision's ``model_from_checkpoint``: rebuild a saved model with what it needs to predict.

    Returns:
        ``{"model", "model_type", "backbone", "class_map", "img_size"}``: the model (eval mode),
        its ``models.mmdet.<type>``, its :class:`Backbone` (``pretrained=False``), the
        :class:`~fpn_lab.core.class_map.ClassMap` and the letterbox side in pixels, all read from
        the checkpoint (:func:`fpn_lab.checkpoint.load_checkpoint`), placed on ``device`` in the
        ``channels_last`` layout (:func:`~fpn_lab.models.build.place_model`; place it as the model
        it is compared with, since the layouts differ in float rounding).

    Raises:
        ModelError: ``model_name``, ``backbone_name``, ``classes`` (a leading ``"background"``
            left out, with a warning) or ``img_size`` given and different from the checkpoint's,
            or an argument fpn_lab has no use for.
    """
    from fpn_lab.checkpoint import load_checkpoint
    from fpn_lab.models.build import place_model

    if unused:
        raise ModelError(f"model_from_checkpoint got {sorted(unused)}; fpn_lab checkpoints carry their preset, classes "
                         "and image size, so only filename (and device) are needed.")
    if classes is not None:
        classes = list(classes)
        if classes and str(classes[0]).casefold() == "background":  # IceVision's class lists started with it
            warnings.warn("model_from_checkpoint: leaving out 'background' from classes: fpn_lab's models have no "
                          "background class.", stacklevel=2)
            classes = classes[1:]
    model, info = load_checkpoint(filename, class_map=classes)
    model = place_model(model, device, channels_last=channels_last)
    _check_names(model, model_name, backbone_name)
    if img_size is not None and int(img_size) != int(info["image_size"]):
        raise ModelError(f"img_size {img_size} differs from the checkpoint's {info['image_size']}; leave it out.")
    model_type = models.mmdet.__getattr__(model.preset.arch)
    backbone = next((b for b in model_type.backbones if b.preset == model.preset.name), None)
    return {"model": model, "model_type": model_type, "backbone": backbone(pretrained=False) if backbone else None,
            "class_map": info["class_map"], "img_size": int(info["image_size"])}  # with the source's ids


def _check_names(model, model_name: str | None, backbone_name: str | None) -> None:
    arch = model.preset.arch
    if model_name is not None and model_name.removeprefix("mmdet.") != arch:
        raise ModelError(f"model_name {model_name!r} does not name this model's type ({'mmdet.' + arch!r}).")
    if backbone_name is not None:
        from fpn_lab.models.registry import icevision_backbones

        if icevision_backbones(arch).get(backbone_name) != model.preset.name:
            raise ModelError(f"backbone_name {backbone_name!r} is not this model's backbone (preset "
                             f"{model.preset.name!r}).")
