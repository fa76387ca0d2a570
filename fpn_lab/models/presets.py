"""The preset catalogue: VFNet, RetinaNet, FCOS, Faster R-CNN and YOLOX from MMDetection 3.3, and EfficientDet
(fpn_lab's head and config on mmdet's EfficientNet), as frozen data.

Each preset names an mmdet config shipped in the mmdet wheel (``mmdet/.mim/configs/...``) and
carries its provenance: weights URL and COCO box AP from mmdet 3.3's ``metafile.yml`` for that
config, the test input size, and the pixel convention of the config's ``DetDataPreprocessor``.
``tests/test_registry.py`` checks these fields against the installed configs and metafiles.

Names are ``<arch>_<backbone>_<neck>_<schedule>``: mmdet's YOLOX uses a PAFPN neck
(``YOLOXPAFPN``), VFNet, RetinaNet and FCOS an FPN (VFNet and FCOS: P3..P7 with extra convs on
the FPN outputs; RetinaNet: P3..P7 with extra convs on the C5 input; Faster R-CNN: P2..P6 as in
the FPN paper, P6 a max-pool of P5, the RPN on all five and the RoI heads on P2..P5). FCOS's ``-giou`` presets
are its improved head (centre sampling, normalised box targets, centre-ness on the box branch,
GIoU loss: mmdet's ``center-normbbox-centeronreg-giou`` configs). IceVision's names
(``<arch>.<backbone>``) are aliases, and IceVision's getting-started ``selection`` indices 0, 1
and 4 map to the same models.

This module is data only: :data:`PRESETS` is a tuple of frozen :class:`Preset` objects and
nothing here imports the registry. :mod:`fpn_lab.models.registry` registers them, in one place,
on the first lookup.

IceVision backbone names left out: ``faster_rcnn.resnet50_caffe_dc5_1x``, which has no FPN (a
dilated C5, one level); every other name in IceVision's ``resnet_fpn.py`` lists of VFNet,
RetinaNet, FCOS, Faster R-CNN and YOLOX is here.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255; mmdet configs' DetDataPreprocessor
IMAGENET_STD = (58.395, 57.12, 57.375)
CAFFE_MEAN = (103.53, 116.28, 123.675)  # BGR, 0..255; the ``*-caffe`` configs (std 1, no channel swap)
CAFFE_STD = (1.0, 1.0, 1.0)
OPENMMLAB = "https://download.openmmlab.com/mmdetection/v2.0"


@dataclass(frozen=True)
class Preset:
    """One model preset (never mutated; pass per-run choices to the builder instead).

    Attributes:
        name: ``<arch>_<backbone>_<neck>_<schedule>``.
        arch: ``"vfnet"``, ``"retinanet"``, ``"fcos"``, ``"faster_rcnn"``, ``"efficientdet"`` or ``"yolox"``.
        config: mmdet config path relative to ``mmdet/.mim/configs``, or ``"fpn_lab:<path>"`` for one
            of fpn_lab's own configs (``fpn_lab/mmdet_adapter/configs/<path>``: EfficientDet).
        neck: the neck type of the config (``"fpn"``, ``"pafpn"`` or ``"bifpn"``).
        levels: feature levels the neck gives the head, e.g. ``("P3", ..., "P7")``.
        weights_url: COCO checkpoint from mmdet 3.3's metafile for this config; ``""`` when none is
            published in a form mmdet loads (EfficientDet).
        coco_box_ap: COCO val2017 box AP (%) that mmdet reports for those weights (EfficientDet: the
            paper's, COCO test-dev, Table 2).
        input_size: (width, height) of mmdet's test ``Resize`` for this config.
        mean, std: normalisation of the config's data preprocessor (0..255 scale) in the
            network's channel order (RGB, or BGR when ``bgr``), or ``None`` for raw 0..255.
        bgr: True when the network takes BGR channel order (mmdet loads BGR and the
            preprocessor does not swap: YOLOX and the ``*-caffe`` RetinaNets, FCOS and Faster R-CNNs).
        pad_value: RGB fill of the letterbox (YOLOX: 114 as its ``Pad``; others: the mean in RGB
            order, which is 0 after normalisation as ``DetDataPreprocessor`` pads).
        aliases: IceVision names (``"retinanet.resnet50_fpn_1x"``).
        selection: IceVision getting-started index, or None.
        description: one line for the selection table.
    """

    name: str
    arch: str
    config: str
    neck: str
    levels: tuple[str, ...]
    weights_url: str
    coco_box_ap: float
    input_size: tuple[int, int]
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    bgr: bool = False
    pad_value: tuple[float, float, float] = IMAGENET_MEAN
    aliases: tuple[str, ...] = ()
    selection: int | None = None
    description: str = ""

    @property
    def weights_filename(self) -> str:
        return self.weights_url.rsplit("/", 1)[-1]


P3_P7 = ("P3", "P4", "P5", "P6", "P7")
P3_P5 = ("P3", "P4", "P5")
P2_P6 = ("P2", "P3", "P4", "P5", "P6")
_SCHEDULES = {"1x": "1x schedule", "2x": "2x schedule", "ms2x": "multi-scale 2x schedule"}
_OPTIONS = {"caffe": "(caffe-style)", "mdconv": "+ DCNv2 in C3-C5", "dcn": "+ DCNv2 in C3-C5",
            "giou": "with centre sampling and GIoU"}
#: The mean of FCOS's plain caffe-style configs (BGR, 0..255; std 1); its ``-giou`` configs use :data:`CAFFE_MEAN`.
FCOS_CAFFE_MEAN = (102.9801, 115.9465, 122.7717)


def _backbone_label(backbone: str) -> str:
    """``"r50"`` -> ``"ResNet-50"``; ``"x101-32x4d-mdconv"`` -> ``"ResNeXt-101 32x4d + DCNv2 in C3-C5"``."""
    net, *options = backbone.split("-")
    family = "ResNeXt" if net.startswith("x") else "ResNet"
    return " ".join([f"{family}-{net[1:]}", *(_OPTIONS.get(o, o) for o in options)])


def _vfnet(backbone, schedule, config, url, ap, alias, selection=None) -> Preset:
    return Preset(
        f"vfnet_{backbone}_fpn_{schedule}", "vfnet", f"vfnet/{config}", "fpn", P3_P7, f"{OPENMMLAB}/vfnet/{url}", ap,
        (1333, 800), aliases=(f"vfnet.{alias}",), selection=selection,
        description=f"VarifocalNet {_backbone_label(backbone)} + FPN (P3-P7), {_SCHEDULES[schedule]}")


def _retinanet(backbone, schedule, config, url, ap, alias, selection=None) -> Preset:
    caffe = dict(mean=CAFFE_MEAN, std=CAFFE_STD, bgr=True) if "caffe" in backbone else {}
    return Preset(
        f"retinanet_{backbone}_fpn_{schedule}", "retinanet", f"retinanet/{config}", "fpn", P3_P7,
        f"{OPENMMLAB}/retinanet/{url}", ap, (1333, 800), aliases=(f"retinanet.{alias}",), selection=selection,
        description=f"RetinaNet {_backbone_label(backbone)} + FPN (P3-P7), {_SCHEDULES[schedule]}", **caffe)


def _fcos(backbone, schedule, config, url, ap, alias, selection=None) -> Preset:
    mean = CAFFE_MEAN if "giou" in backbone else FCOS_CAFFE_MEAN  # the improved-head configs use the usual caffe mean
    caffe = dict(mean=mean, std=CAFFE_STD, bgr=True, pad_value=mean[::-1]) if "caffe" in backbone else {}
    return Preset(
        f"fcos_{backbone}_fpn_{schedule}", "fcos", f"fcos/{config}", "fpn", P3_P7, f"{OPENMMLAB}/fcos/{url}", ap,
        (1333, 800), aliases=(f"fcos.{alias}",), selection=selection,
        description=f"FCOS {_backbone_label(backbone)} + FPN (P3-P7), GroupNorm head, {_SCHEDULES[schedule]}", **caffe)


def _faster_rcnn(backbone, schedule, config, url, ap, alias, selection=None) -> Preset:
    caffe = dict(mean=CAFFE_MEAN, std=CAFFE_STD, bgr=True) if "caffe" in backbone else {}
    return Preset(
        f"faster_rcnn_{backbone}_fpn_{schedule}", "faster_rcnn", f"faster_rcnn/{config}", "fpn", P2_P6,
        f"{OPENMMLAB}/faster_rcnn/{url}", ap, (1333, 800), aliases=(f"faster_rcnn.{alias}",), selection=selection,
        description=f"Faster R-CNN {_backbone_label(backbone)} + FPN (RPN on P2-P6, RoI heads on P2-P5), "
                    f"{_SCHEDULES[schedule]}", **caffe)


def _efficientdet(phi: int, backbone: str, config: str, ap: float, input_size: int) -> Preset:
    return Preset(
        f"efficientdet_{backbone}_bifpn_300e", "efficientdet", f"fpn_lab:efficientdet/{config}", "bifpn", P3_P7, "",
        ap, (input_size, input_size), aliases=(f"efficientdet.d{phi}",),
        description=f"EfficientDet-D{phi} EfficientNet-{backbone[3:].upper()} + BiFPN (P3-P7), 300-epoch recipe "
                    "(fpn_lab's head and config)")


def _yolox(size, config, url, ap, input_size, selection=None) -> Preset:
    return Preset(
        f"yolox_{size}_pafpn_300e", "yolox", f"yolox/{config}", "pafpn", P3_P5, f"{OPENMMLAB}/yolox/{url}", ap,
        input_size, mean=None, std=None, bgr=True, pad_value=(114.0, 114.0, 114.0),
        aliases=(f"yolox.yolox_{size}_8x8",), selection=selection,
        description=f"YOLOX-{size} CSPDarknet + PAFPN (P3-P5), 300-epoch recipe")


PRESETS: tuple[Preset, ...] = (
    # --- VFNet (IceVision: models.mmdet.vfnet.backbones.*) -----------------------------------
    _vfnet("r50", "1x", "vfnet_r50_fpn_1x_coco.py",
           "vfnet_r50_fpn_1x_coco/vfnet_r50_fpn_1x_coco_20201027-38db6f58.pth", 41.6, "resnet50_fpn_1x"),
    _vfnet("r50", "ms2x", "vfnet_r50_fpn_ms-2x_coco.py",
           "vfnet_r50_fpn_mstrain_2x_coco/vfnet_r50_fpn_mstrain_2x_coco_20201027-7cc75bd2.pth", 44.8,
           "resnet50_fpn_mstrain_2x", selection=0),
    _vfnet("r50-mdconv", "ms2x", "vfnet_r50-mdconv-c3-c5_fpn_ms-2x_coco.py",
           "vfnet_r50_fpn_mdconv_c3-c5_mstrain_2x_coco/"
           "vfnet_r50_fpn_mdconv_c3-c5_mstrain_2x_coco_20201027pth-6879c318.pth",
           48.0, "resnet50_fpn_mdconv_c3_c5_mstrain_2x"),
    _vfnet("r101", "1x", "vfnet_r101_fpn_1x_coco.py",
           "vfnet_r101_fpn_1x_coco/vfnet_r101_fpn_1x_coco_20201027pth-c831ece7.pth", 43.6, "resnet101_fpn_1x"),
    _vfnet("r101", "ms2x", "vfnet_r101_fpn_ms-2x_coco.py",
           "vfnet_r101_fpn_mstrain_2x_coco/vfnet_r101_fpn_mstrain_2x_coco_20201027pth-4a5d53f1.pth", 46.7,
           "resnet101_fpn_mstrain_2x"),
    _vfnet("r101-mdconv", "ms2x", "vfnet_r101-mdconv-c3-c5_fpn_ms-2x_coco.py",
           "vfnet_r101_fpn_mdconv_c3-c5_mstrain_2x_coco/"
           "vfnet_r101_fpn_mdconv_c3-c5_mstrain_2x_coco_20201027pth-7729adb5.pth",
           49.2, "resnet101_fpn_mdconv_c3_c5_mstrain_2x"),
    _vfnet("x101-32x4d-mdconv", "ms2x", "vfnet_x101-32x4d-mdconv-c3-c5_fpn_ms-2x_coco.py",
           "vfnet_x101_32x4d_fpn_mdconv_c3-c5_mstrain_2x_coco/"
           "vfnet_x101_32x4d_fpn_mdconv_c3-c5_mstrain_2x_coco_20201027pth-d300a6fc.pth",
           50.0, "resnext101_32x4d_fpn_mdconv_c3_c5_mstrain_2x"),
    _vfnet("x101-64x4d-mdconv", "ms2x", "vfnet_x101-64x4d-mdconv-c3-c5_fpn_ms-2x_coco.py",
           "vfnet_x101_64x4d_fpn_mdconv_c3-c5_mstrain_2x_coco/"
           "vfnet_x101_64x4d_fpn_mdconv_c3-c5_mstrain_2x_coco_20201027pth-b5f6da5e.pth",
           50.8, "resnext101_64x4d_fpn_mdconv_c3_c5_mstrain_2x"),
    # --- RetinaNet (IceVision: models.mmdet.retinanet.backbones.*) ---------------------------
    _retinanet("r18", "1x", "retinanet_r18_fpn_1x_coco.py",
               "retinanet_r18_fpn_1x_coco/retinanet_r18_fpn_1x_coco_20220407_171055-614fd399.pth", 31.7,
               "resnet18_fpn_1x"),
    _retinanet("r50-caffe", "1x", "retinanet_r50-caffe_fpn_1x_coco.py",
               "retinanet_r50_caffe_fpn_1x_coco/retinanet_r50_caffe_fpn_1x_coco_20200531-f11027c5.pth", 36.3,
               "resnet50_caffe_fpn_1x"),
    _retinanet("r50", "1x", "retinanet_r50_fpn_1x_coco.py",
               "retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth", 36.5, "resnet50_fpn_1x",
               selection=1),
    _retinanet("r50", "2x", "retinanet_r50_fpn_2x_coco.py",
               "retinanet_r50_fpn_2x_coco/retinanet_r50_fpn_2x_coco_20200131-fdb43119.pth", 37.4, "resnet50_fpn_2x"),
    _retinanet("r101-caffe", "1x", "retinanet_r101-caffe_fpn_1x_coco.py",
               "retinanet_r101_caffe_fpn_1x_coco/retinanet_r101_caffe_fpn_1x_coco_20200531-b428fa0f.pth", 38.5,
               "resnet101_caffe_fpn_1x"),
    _retinanet("r101", "1x", "retinanet_r101_fpn_1x_coco.py",
               "retinanet_r101_fpn_1x_coco/retinanet_r101_fpn_1x_coco_20200130-7a93545f.pth", 38.5,
               "resnet101_fpn_1x"),
    _retinanet("r101", "2x", "retinanet_r101_fpn_2x_coco.py",
               "retinanet_r101_fpn_2x_coco/retinanet_r101_fpn_2x_coco_20200131-5560aee8.pth", 38.9,
               "resnet101_fpn_2x"),
    _retinanet("x101-32x4d", "1x", "retinanet_x101-32x4d_fpn_1x_coco.py",
               "retinanet_x101_32x4d_fpn_1x_coco/retinanet_x101_32x4d_fpn_1x_coco_20200130-5c8b7ec4.pth", 39.9,
               "resnext101_32x4d_fpn_1x"),
    _retinanet("x101-32x4d", "2x", "retinanet_x101-32x4d_fpn_2x_coco.py",
               "retinanet_x101_32x4d_fpn_2x_coco/retinanet_x101_32x4d_fpn_2x_coco_20200131-237fc5e1.pth", 40.1,
               "resnext101_32x4d_fpn_2x"),
    _retinanet("x101-64x4d", "1x", "retinanet_x101-64x4d_fpn_1x_coco.py",
               "retinanet_x101_64x4d_fpn_1x_coco/retinanet_x101_64x4d_fpn_1x_coco_20200130-366f5af1.pth", 41.0,
               "resnext101_64x4d_fpn_1x"),
    _retinanet("x101-64x4d", "2x", "retinanet_x101-64x4d_fpn_2x_coco.py",
               "retinanet_x101_64x4d_fpn_2x_coco/retinanet_x101_64x4d_fpn_2x_coco_20200131-bca068ab.pth", 40.8,
               "resnext101_64x4d_fpn_2x"),
    # --- FCOS (IceVision: models.mmdet.fcos.backbones.*), the anchor-free FPN detector VFNet builds on ----
    _fcos("r50-caffe", "1x", "fcos_r50-caffe_fpn_gn-head_1x_coco.py",
          "fcos_r50_caffe_fpn_gn-head_1x_coco/fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth", 36.6,
          "resnet50_caffe_fpn_gn_head"),
    _fcos("r50-caffe-giou", "1x", "fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py",
          "fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco/"
          "fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco-0a0d75a8.pth", 38.7,
          "resnet50_caffe_fpn_gn_head_center_normbbox_centeronreg_giou"),
    _fcos("r50-dcn-caffe-giou", "1x", "fcos_r50-dcn-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py",
          "fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_dcn_1x_coco/"
          "fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_dcn_1x_coco-ae4d8b3d.pth", 42.3,
          "resnet50_caffe_fpn_gn_head_dcn_1x_center_normbbox_centeronreg_giou"),
    _fcos("r101-caffe", "1x", "fcos_r101-caffe_fpn_gn-head-1x_coco.py",
          "fcos_r101_caffe_fpn_gn-head_1x_coco/fcos_r101_caffe_fpn_gn-head_1x_coco-0e37b982.pth", 39.1,
          "resnet101_caffe_fpn_gn_head_1x_coco"),
    _fcos("r50-caffe", "ms2x", "fcos_r50-caffe_fpn_gn-head_ms-640-800-2x_coco.py",
          "fcos_r50_caffe_fpn_gn-head_mstrain_640-800_2x_coco/"
          "fcos_r50_caffe_fpn_gn-head_mstrain_640-800_2x_coco-d92ceeea.pth", 38.5,
          "resnet50_caffe_fpn_gn_head_mstrain_640_800_2x"),
    _fcos("r101-caffe", "ms2x", "fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco.py",
          "fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco/"
          "fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco-511424d6.pth", 40.8,
          "resnet101_caffe_fpn_gn_head_mstrain_640_800_2x"),
    _fcos("x101-64x4d", "ms2x", "fcos_x101-64x4d_fpn_gn-head_ms-640-800-2x_coco.py",
          "fcos_x101_64x4d_fpn_gn-head_mstrain_640-800_2x_coco/"
          "fcos_x101_64x4d_fpn_gn-head_mstrain_640-800_2x_coco-ede514a8.pth", 42.6,
          "resnext101_64x4d_fpn_gn_head_mstrain_640_800_2x"),
    # --- Faster R-CNN (IceVision: models.mmdet.faster_rcnn.backbones.*), the detector FPN was introduced with ------
    _faster_rcnn("r50-caffe", "1x", "faster-rcnn_r50-caffe_fpn_1x_coco.py",
                 "faster_rcnn_r50_caffe_fpn_1x_coco/faster_rcnn_r50_caffe_fpn_1x_coco_bbox_mAP-0.378_20200504_180032-"
                 "c5925ee5.pth", 37.8, "resnet50_caffe_fpn_1x"),
    _faster_rcnn("r50", "1x", "faster-rcnn_r50_fpn_1x_coco.py",
                 "faster_rcnn_r50_fpn_1x_coco/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth", 37.4,
                 "resnet50_fpn_1x"),
    _faster_rcnn("r50", "2x", "faster-rcnn_r50_fpn_2x_coco.py",
                 "faster_rcnn_r50_fpn_2x_coco/faster_rcnn_r50_fpn_2x_coco_bbox_mAP-0.384_20200504_210434-a5d8aa15.pth",
                 38.4, "resnet50_fpn_2x"),
    _faster_rcnn("r101-caffe", "1x", "faster-rcnn_r101-caffe_fpn_1x_coco.py",
                 "faster_rcnn_r101_caffe_fpn_1x_coco/faster_rcnn_r101_caffe_fpn_1x_coco_bbox_mAP-0.398_20200504_180057-"
                 "b269e9dd.pth", 39.8, "resnet101_caffe_fpn_1x"),
    _faster_rcnn("r101", "1x", "faster-rcnn_r101_fpn_1x_coco.py",
                 "faster_rcnn_r101_fpn_1x_coco/faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth", 39.4,
                 "resnet101_fpn_1x"),
    _faster_rcnn("r101", "2x", "faster-rcnn_r101_fpn_2x_coco.py",
                 "faster_rcnn_r101_fpn_2x_coco/faster_rcnn_r101_fpn_2x_coco_bbox_mAP-0.398_20200504_210455-1d2dac9c.pth",
                 39.8, "resnet101_fpn_2x", selection=2),
    _faster_rcnn("x101-32x4d", "1x", "faster-rcnn_x101-32x4d_fpn_1x_coco.py",
                 "faster_rcnn_x101_32x4d_fpn_1x_coco/faster_rcnn_x101_32x4d_fpn_1x_coco_20200203-cff10310.pth", 41.2,
                 "resnext101_32x4d_fpn_1x"),
    _faster_rcnn("x101-32x4d", "2x", "faster-rcnn_x101-32x4d_fpn_2x_coco.py",
                 "faster_rcnn_x101_32x4d_fpn_2x_coco/faster_rcnn_x101_32x4d_fpn_2x_coco_bbox_mAP-0.412_20200506_041400-"
                 "64a12c0b.pth", 41.2, "resnext101_32x4d_fpn_2x"),
    _faster_rcnn("x101-64x4d", "1x", "faster-rcnn_x101-64x4d_fpn_1x_coco.py",
                 "faster_rcnn_x101_64x4d_fpn_1x_coco/faster_rcnn_x101_64x4d_fpn_1x_coco_20200204-833ee192.pth", 42.1,
                 "resnext101_64x4d_fpn_1x"),
    _faster_rcnn("x101-64x4d", "2x", "faster-rcnn_x101-64x4d_fpn_2x_coco.py",
                 "faster_rcnn_x101_64x4d_fpn_2x_coco/faster_rcnn_x101_64x4d_fpn_2x_coco_20200512_161033-5961fa95.pth",
                 41.6, "resnext101_64x4d_fpn_2x"),
    # --- EfficientDet (fpn_lab's head and config: mmdet 3.3's wheel ships neither; COCO AP from the paper) ---
    _efficientdet(0, "effb0", "efficientdet_effb0_bifpn_300e_coco.py", 34.6, 512),
    # --- YOLOX (IceVision: models.mmdet.yolox.backbones.*) -----------------------------------
    _yolox("tiny", "yolox_tiny_8xb8-300e_coco.py",
           "yolox_tiny_8x8_300e_coco/yolox_tiny_8x8_300e_coco_20211124_171234-b4047906.pth", 32.0, (416, 416)),
    _yolox("s", "yolox_s_8xb8-300e_coco.py",
           "yolox_s_8x8_300e_coco/yolox_s_8x8_300e_coco_20211121_095711-4592a793.pth", 40.5, (640, 640), selection=4),
    _yolox("l", "yolox_l_8xb8-300e_coco.py",
           "yolox_l_8x8_300e_coco/yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth", 49.4, (640, 640)),
    _yolox("x", "yolox_x_8xb8-300e_coco.py",
           "yolox_x_8x8_300e_coco/yolox_x_8x8_300e_coco_20211126_140254-1ef88d67.pth", 50.9, (640, 640)),
)
