"""IceVision's ``tfms.A`` namespace: ``Adapter``, ``aug_tfms``, ``resize_and_pad`` and ``Normalize``.

IceVision wrote transforms as a list handed to an adapter::

    train_tfms = tfms.A.Adapter([*tfms.A.aug_tfms(size=384, presize=512), tfms.A.Normalize()])
    valid_tfms = tfms.A.Adapter([*tfms.A.resize_and_pad(384), tfms.A.Normalize()])

Here the same lines build fpn_lab's own transforms (:class:`~fpn_lab.data.transforms.Augment` for
training, the exact :class:`~fpn_lab.data.transforms.Letterbox` for validation and inference), so a
``Dataset`` made from them is fpn_lab's :class:`~fpn_lab.data.dataloaders.Dataset`. Two differences
from IceVision, both on purpose:

* ``Normalize()`` does nothing: each model's own data preprocessor (mmdet's
  ``DetDataPreprocessor``) normalises, as in mmdet's pipeline; normalising in the transforms too
  would normalise twice. It warns once.
* The letterbox fill is the model's own (114 grey for YOLOX as its mmdet pipeline pads; the
  ImageNet mean, which is 0 after normalisation, for VFNet and RetinaNet) unless ``pad`` is given:
  transforms are written before the model is chosen, so the model type's ``train_dl`` /
  ``valid_dl`` / ``infer_dl`` set it (:func:`for_model`). Until then the fill is 114.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

from fpn_lab.data import transforms as core
from fpn_lab.errors import ParamsError

#: Fill used until a model type sets its own (YOLOX's; see the module docstring).
DEFAULT_PAD = (114.0, 114.0, 114.0)
#: IceVision ``aug_tfms`` arguments fpn_lab's augmentation does not have, with what to use instead.
ICEVISION_ONLY_AUG_ARGS = {
    "shift_scale_rotate": "scale=(lo, hi) and translate=fraction (an albumentations Affine, no rotation)",
    "rgb_shift": "color=True (mmdet YOLOX's HSV jitter) or add A.RGBShift(...) to the Adapter list",
    "lighting": "color=True, or add A.RandomBrightnessContrast(...) to the Adapter list",
    "blur": "add A.Blur(...) to the Adapter list",
    "crop_fn": "add an albumentations crop to the Adapter list",
}


@dataclass(frozen=True)
class AugSpec:
    """What ``tfms.A.aug_tfms`` asked for (built by :func:`Adapter`)."""

    size: int
    presize: int | None
    pad: tuple | None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ResizeAndPadSpec:
    """What ``tfms.A.resize_and_pad`` asked for (built by :func:`Adapter`)."""

    size: int
    pad: tuple | None


@dataclass(frozen=True)
class Normalize:
    """IceVision's ``tfms.A.Normalize()``: accepted and does nothing (module docstring). Warns once."""

    mean: tuple | None = None
    std: tuple | None = None
    max_pixel_value: float | None = None

    def __post_init__(self):
        _warn_normalize_once()


_NORMALIZE_WARNED = []


def _warn_normalize_once() -> None:
    if not _NORMALIZE_WARNED:
        _NORMALIZE_WARNED.append(True)
        warnings.warn("tfms.A.Normalize() does nothing in fpn_lab: each model's data preprocessor normalises "
                      "(mmdet's DetDataPreprocessor, with the preset config's mean and std), as mmdet's own "
                      "pipeline does, so images are normalised once. It can stay in the list or be left out.",
                      stacklevel=3)


def aug_tfms(size: int, presize: int | None = None, pad: Sequence[float] | None = None, **options) -> list[AugSpec]:
    """IceVision's training augmentation as a one-item list for :func:`Adapter` (``[*aug_tfms(...)]``).

    Args:
        size: network input side in pixels (a multiple of 32).
        presize: resize the longest side to this before augmenting (cheaper), or ``None``.
        pad: RGB 0..255 fill of the letterbox and affine borders; default the model's own.
        options: :func:`fpn_lab.data.transforms.aug_tfms` keywords (``horizontal_flip``,
            ``vertical_flip``, ``scale``, ``translate``, ``color``).

    Raises:
        ParamsError: an IceVision-only keyword (``shift_scale_rotate``, ``rgb_shift``,
            ``lighting``, ``blur``, ``crop_fn``), named with what to use instead.
    """
    bad = {k: ICEVISION_ONLY_AUG_ARGS[k] for k in options if k in ICEVISION_ONLY_AUG_ARGS}
    if bad:
        raise ParamsError("aug_tfms: " + "; ".join(f"{k!r} is IceVision's, fpn_lab's augmentation has no such "
                                                     f"argument: use {v}" for k, v in bad.items()) + ".")
    known = {"horizontal_flip", "vertical_flip", "scale", "translate", "color"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ParamsError(f"aug_tfms got unknown arguments {unknown}; it takes size, presize, pad and {sorted(known)}.")
    return [AugSpec(size, presize, None if pad is None else tuple(pad), dict(options))]


def resize_and_pad(size: int, pad: Sequence[float] | None = None) -> list[ResizeAndPadSpec]:
    """IceVision's validation transform as a one-item list for :func:`Adapter`: the exact letterbox
    (keep-ratio resize to ``size`` on the longest side, pad to ``size x size``; fill ``pad`` or the
    model's own)."""
    return [ResizeAndPadSpec(size, None if pad is None else tuple(pad))]


def Adapter(tfms: Sequence) -> core.Augment | core.Letterbox:  # noqa: N802  (IceVision's class name)
    """Build fpn_lab's transform from IceVision's list.

    Args:
        tfms: exactly one ``*aug_tfms(...)`` (training) or ``*resize_and_pad(...)`` (validation,
            inference), any ``Normalize()`` (no effect), and, with ``aug_tfms`` only, extra
            albumentations transforms, applied after fpn_lab's augmentation and before the letterbox.

    Returns:
        :class:`~fpn_lab.data.transforms.Augment` or :class:`~fpn_lab.data.transforms.Letterbox`,
        remembering the list in ``adapter_spec`` so a model type can set its own fill.

    Raises:
        ParamsError: no or two base transforms, an item of another type, or extra albumentations
            transforms with ``resize_and_pad`` (validation must stay the exact, invertible letterbox).
    """
    import albumentations as A

    items = list(tfms)
    bases = [t for t in items if isinstance(t, (AugSpec, ResizeAndPadSpec))]
    extra = [t for t in items if isinstance(t, A.BasicTransform)]
    other = [t for t in items if not isinstance(t, (AugSpec, ResizeAndPadSpec, Normalize, A.BasicTransform))]
    if other:
        raise ParamsError(f"Adapter: cannot use {[type(t).__name__ for t in other]}; the list takes "
                          "*tfms.A.aug_tfms(...) "
                          "or *tfms.A.resize_and_pad(...), tfms.A.Normalize() and albumentations transforms.")
    if len(bases) != 1:
        raise ParamsError(f"Adapter needs exactly one *tfms.A.aug_tfms(...) (training) or *tfms.A.resize_and_pad(...) "
                          f"(validation) in its list; got {len(bases)} ({[type(b).__name__ for b in bases]}).")
    if extra and isinstance(bases[0], ResizeAndPadSpec):
        raise ParamsError(f"Adapter: albumentations transforms {[type(t).__name__ for t in extra]} with "
                          "resize_and_pad: "
                          "validation and inference use the exact letterbox only, so predictions map back to the "
                          "original image; put augmentations in the training list with aug_tfms.")
    spec = AdapterSpec(bases[0], tuple(extra))
    return spec.build(spec.base.pad or DEFAULT_PAD)


@dataclass(frozen=True)
class AdapterSpec:
    """An :func:`Adapter` list, kept so the transform can be rebuilt with a model's fill."""

    base: AugSpec | ResizeAndPadSpec
    extra: tuple = ()

    @property
    def pad_is_set(self) -> bool:
        return self.base.pad is not None

    def build(self, pad_value) -> core.Augment | core.Letterbox:
        if isinstance(self.base, ResizeAndPadSpec):
            out = core.resize_and_pad(self.base.size, pad_value=pad_value)
        else:
            out = core.aug_tfms(self.base.size, self.base.presize, pad_value=pad_value, extra=self.extra,
                                **self.base.options)
        out.adapter_spec = self
        return out


def for_model(dataset, pad_value):
    """``dataset`` with its :func:`Adapter` transform rebuilt for a model that pads with ``pad_value``.

    Returns ``dataset`` itself when the transform did not come from :func:`Adapter`, when ``pad``
    was given explicitly, or when the fill already matches; otherwise a new
    :class:`~fpn_lab.data.dataloaders.Dataset` over the same records sharing the decoded-image cache.
    """
    from fpn_lab.data.dataloaders import Dataset

    tfms = dataset.tfms
    spec = getattr(tfms, "adapter_spec", None)
    current = getattr(tfms, "letterbox", tfms).pad_value
    wanted = tuple(float(v) for v in pad_value)
    if spec is None or spec.pad_is_set or current == wanted:
        return dataset
    out = Dataset(dataset.records, spec.build(wanted), cache_images=dataset.cache_images)
    out._cache = dataset._cache
    return out


#: ``tfms.A``: what IceVision users write.
A = SimpleNamespace(Adapter=Adapter, aug_tfms=aug_tfms, resize_and_pad=resize_and_pad, Normalize=Normalize)
