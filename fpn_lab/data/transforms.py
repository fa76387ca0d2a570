"""Transforms: albumentations augmentation for training, and an exact letterbox for every split.

Every image reaching a model goes through :class:`Letterbox`: keep-ratio resize so the longest
side is ``size`` (rounded as ``mmcv.rescale_size`` rounds, ``int(x + 0.5)``, with
``cv2.INTER_LINEAR`` as ``mmcv.imresize`` uses), then constant padding to ``size x size``. The
geometry it used is returned with the image, so predictions map back to the original image
exactly (:meth:`Geometry.to_original`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI at import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fpn_lab.errors import DataError  # noqa: E402

PAD_POSITIONS = ("top_left", "center")


@dataclass(frozen=True)
class Geometry:
    """How an image of ``ori_shape`` was placed in the network input.

    ``x_net = x_ori * scale_x + pad_left`` (and likewise for y); the content occupies
    ``[pad_top : pad_top + img_shape[0], pad_left : pad_left + img_shape[1]]``.
    """

    ori_shape: tuple[int, int]
    img_shape: tuple[int, int]
    pad_shape: tuple[int, int]
    pad_left: int
    pad_top: int

    @property
    def scale_x(self) -> float:
        return self.img_shape[1] / self.ori_shape[1]

    @property
    def scale_y(self) -> float:
        return self.img_shape[0] / self.ori_shape[0]

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``float[N, 4]`` xyxy boxes from network input pixels to original-image pixels (clipped)."""
        b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad_left) / self.scale_x
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad_top) / self.scale_y
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.ori_shape[1])
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.ori_shape[0])
        return b

    def to_network(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``float[N, 4]`` xyxy boxes from original-image pixels to network input pixels."""
        b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        b[:, [0, 2]] = b[:, [0, 2]] * self.scale_x + self.pad_left
        b[:, [1, 3]] = b[:, [1, 3]] * self.scale_y + self.pad_top
        return b


class Letterbox:
    """Keep-ratio resize to ``size`` on the longest side, then pad to ``size x size``.

    Each resized side is at least 1 px: a side that rounds to 0 px (a 2000x3 image at 64 px
    would be 0.096 px tall) becomes a 1 px strip, where ``cv2.resize`` (and mmdet's ``Resize``)
    would fail. :class:`Geometry` keeps one scale per axis (``img_shape / ori_shape``: 1/3 for
    that strip, not 0.032), so boxes still map back to the original image exactly.

    Args:
        size: output side in pixels; must be a multiple of 32 (the coarsest FPN stride of the
            presets' P5, so no second padding happens inside the model).
        pad_value: fill of the padding, RGB 0..255 (the preset's own: 114 grey for YOLOX as its
            mmdet test pipeline pads, the normalisation mean for ImageNet-normalised models, so
            that padding is 0 after normalisation as ``DetDataPreprocessor`` pads).
        position: ``"top_left"`` (as mmdet's ``Pad``) or ``"center"``.
    """

    def __init__(self, size: int, pad_value=(114, 114, 114), position: str = "top_left"):
        if not isinstance(size, int) or size < 32 or size % 32:
            raise DataError(f"image_size must be a positive multiple of 32 (the FPN's coarsest stride); "
                            f"got {size!r}. Try {max(32, round(size / 32) * 32) if isinstance(size, (int, float)) else 320}.")
        if position not in PAD_POSITIONS:
            raise DataError(f"pad position must be one of {PAD_POSITIONS}; got {position!r}.")
        self.size, self.position = size, position
        self.pad_value = tuple(float(v) for v in np.broadcast_to(np.asarray(pad_value, np.float64), (3,)))

    def geometry(self, height: int, width: int) -> Geometry:
        scale = self.size / max(height, width)
        # mmcv.rescale_size's rounding, clamped to [1, size]: a side never rounds to 0 px
        nh = max(1, min(int(height * scale + 0.5), self.size))
        nw = max(1, min(int(width * scale + 0.5), self.size))
        top = (self.size - nh) // 2 if self.position == "center" else 0
        left = (self.size - nw) // 2 if self.position == "center" else 0
        return Geometry((height, width), (nh, nw), (self.size, self.size), left, top)

    def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None):
        """Letterbox ``uint8[H, W, 3]`` (H, W >= 1); returns ``(uint8[size, size, 3], float32[N, 4]
        boxes in network pixels, Geometry)``.

        Raises:
            DataError: ``image`` is not a ``uint8[H, W, 3]`` array with H, W >= 1 (a float, grey or
                RGBA array would otherwise be cast or broadcast silently).
        """
        check_image_array(image)
        g = self.geometry(*image.shape[:2])
        resized = cv2.resize(image, (g.img_shape[1], g.img_shape[0]), interpolation=cv2.INTER_LINEAR)
        out = np.empty((self.size, self.size, 3), np.uint8)
        out[...] = np.round(self.pad_value).astype(np.uint8)
        out[g.pad_top:g.pad_top + g.img_shape[0], g.pad_left:g.pad_left + g.img_shape[1]] = resized
        net_boxes = g.to_network(boxes if boxes is not None else np.zeros((0, 4), np.float32))
        return out, net_boxes, g


def check_image_array(image, what: str = "image") -> None:
    """Raise a :class:`DataError` unless ``image`` is a ``uint8[H, W, 3]`` array with H, W >= 1."""
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if (not isinstance(image, np.ndarray) or dtype != np.uint8 or len(shape) != 3 or shape[2] != 3
            or min(shape[:2]) < 1):
        raise DataError(f"{what}: got {type(image).__name__} of shape {shape} and dtype {dtype}; expected "
                        "uint8[H, W, 3] RGB with H, W >= 1. Decode files with fpn_lab.data.images.load_image, "
                        "convert grey or RGBA arrays to 3-channel RGB and 0..1 floats with "
                        "(img * 255).round().astype(np.uint8).")


def resize_and_pad(size: int, pad_value=(114, 114, 114), position: str = "top_left") -> Letterbox:
    """Validation and inference transform: the exact, invertible :class:`Letterbox` (IceVision's name)."""
    return Letterbox(size, pad_value, position)


#: Boxes narrower or lower than this many pixels after the letterbox are left out of training: the
#: assigners cannot place them (VFNet finds no positive for them; RetinaNet's box loss grows tenfold).
MIN_BOX_PX = 1.0


def too_small(net_boxes: np.ndarray) -> np.ndarray:
    """``bool[N]``: the xyxy boxes (network pixels) narrower or lower than :data:`MIN_BOX_PX`."""
    b = np.asarray(net_boxes, np.float32).reshape(-1, 4)
    return ((b[:, 2] - b[:, 0]) < MIN_BOX_PX) | ((b[:, 3] - b[:, 1]) < MIN_BOX_PX)


class Augment:
    """Training transform: albumentations augmentation on the original image, then :class:`Letterbox`.

    Boxes follow every geometric step (albumentations ``BboxParams`` in ``pascal_voc`` = xyxy
    pixels); boxes less than 30 % visible after a crop or shift are dropped.

    Randomness: albumentations 2 draws from the ``Compose``'s own generators, which neither
    ``random.seed`` nor ``numpy.random.seed`` reach. :func:`aug_tfms` seeds them from Python's
    ``random`` (so ``set_seed`` before it makes the first draws repeatable) and the training
    loader re-seeds them at the start of every epoch and in every worker (:meth:`reseed`,
    :class:`~fpn_lab.data.dataloaders.DetectionDataLoader`).
    """

    def __init__(self, pipeline: A.Compose, letterbox: Letterbox):
        self.pipeline, self.letterbox = pipeline, letterbox

    def reseed(self, seed: int) -> None:
        """Seed every random draw of the albumentations pipeline (``Compose.set_random_seed``)."""
        self.pipeline.set_random_seed(int(seed) % 2**32)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        """Augmented, letterboxed ``image`` and its boxes in network pixels; boxes dropped by the
        augmentation or smaller than :data:`MIN_BOX_PX` after it are left out."""
        out = self.pipeline(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels))
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        img, net_boxes, g = self.letterbox(out["image"], boxes)
        keep = ~too_small(net_boxes)
        return img, net_boxes[keep], np.asarray(out["labels"], np.int64)[keep], g


def aug_tfms(size: int, presize: int | None = None, *, pad_value=(114, 114, 114), horizontal_flip: bool = True,
             vertical_flip: bool = False, scale=(0.75, 1.25), translate=0.1, color: bool = True,
             extra: tuple = ()) -> Augment:
    """Training augmentation (IceVision's ``aug_tfms`` shape), ending in the same letterbox as validation.

    Args:
        size: network input side (multiple of 32).
        presize: if given, images are first resized so the longest side is ``presize`` and
            augmented at that resolution (cheaper; IceVision's ``presize``), then letterboxed.
        pad_value: fill for padding and for areas uncovered by the affine shift (RGB 0..255).
        horizontal_flip: random left-right flips with p = 0.5.
        vertical_flip: random up-down flips with p = 0.5.
        scale: random zoom range of the affine step; translate: fraction of the side (applied to
            every image, as mmdet's ``RandomAffine``).
        color: additive hue / saturation / value shifts of up to 5 / 30 / 30 in OpenCV's uint8 HSV
            on every image: the jitter of mmdet's ``YOLOXHSVRandomAug``. (A weaker jitter, half
            the images with brightness/contrast and hue +-10, trained to 0.033 lower AP on BCCD:
            ``bench/RESULTS.md``, accuracy parity.)
        extra: albumentations transforms applied after these steps, before the letterbox (boxes
            follow them).
    """
    fill = tuple(int(round(v)) for v in np.broadcast_to(np.asarray(pad_value, np.float64), (3,)))
    steps = []
    if presize:
        steps.append(A.LongestMaxSize(max_size=int(presize), interpolation=cv2.INTER_LINEAR))
    if horizontal_flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if vertical_flip:
        steps.append(A.VerticalFlip(p=0.5))
    steps.append(A.Affine(scale=scale, translate_percent=(-translate, translate), rotate=0, fit_output=False,
                          border_mode=cv2.BORDER_CONSTANT, fill=fill, p=1.0))
    if color:
        steps.append(A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=30, val_shift_limit=30, p=1.0))
    steps += list(extra)
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, min_area=4.0)
    return Augment(A.Compose(steps, bbox_params=bbox_params, seed=random.getrandbits(32)), Letterbox(size, pad_value))
