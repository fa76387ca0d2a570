"""The neck as a choice: swap a preset's neck for FPN, PAFPN, NAS-FPN, BiFPN or ChannelMapper, keeping
the head consistent.

A head expects feature maps at fixed strides (YOLOX: 8, 16, 32 = P3-P5; RetinaNet, VFNet and FCOS:
8 ... 128 = P3-P7; Faster R-CNN's RPN: 4 ... 64 = P2-P6, its RoI extractor P2-P5 of them) with
``in_channels`` channels. :func:`set_neck` builds the new neck config from the preset's backbone
outputs, checks that it yields exactly the head's strides, and sets the head's ``in_channels``
(two-stage: the RPN's and the RoI heads') to the neck's ``out_channels``; a conflicting argument
is an error that says which and why. ``"pafpn"`` is mmdet's ``PAFPN`` on every preset; YOLOX's
own ``YOLOXPAFPN`` (PAFPN with CSP blocks) is the preset's neck, ``neck=""``. YOLOX's head takes
the strides it is given, so on YOLOX a neck with five levels (NAS-FPN always; BiFPN, FPN or PAFPN
with ``num_outs=5``) gives it P3-P7. ``channel_mapper`` (mmdet's ``ChannelMapper``: a 3x3
convolution per level, no fusion between levels) is the control.
"""

from __future__ import annotations

import math

from fpn_lab.errors import ModelError, NeckIncompatibleError, ParamsError

#: fpn_lab neck name -> mmdet neck type (``fpn_lab.BiFPN``: :mod:`fpn_lab.mmdet_adapter.bifpn`).
NECK_TYPES = {"fpn": "FPN", "pafpn": "PAFPN", "nasfpn": "NASFPN", "bifpn": "fpn_lab.BiFPN",
              "channel_mapper": "ChannelMapper"}
#: The arguments a user may override, per neck.
NECK_ARGS = {
    "fpn": ("out_channels", "start_level", "add_extra_convs", "num_outs", "relu_before_extra_convs"),
    "pafpn": ("out_channels", "start_level", "add_extra_convs", "num_outs", "relu_before_extra_convs"),
    "nasfpn": ("out_channels", "start_level", "num_outs"),
    "bifpn": ("out_channels", "start_level", "num_outs", "num_repeats", "fusion"),
    "channel_mapper": ("out_channels", "start_level", "num_outs"),
}
#: Every neck argument (the union of :data:`NECK_ARGS`).
FPN_ARGS = tuple(dict.fromkeys(a for args in NECK_ARGS.values() for a in args))


def backbone_strides(cfg) -> list[int]:
    """Strides of the backbone outputs the neck receives (ResNet: 4..32; CSPDarknet: 8..32)."""
    bb = cfg.model.backbone
    if bb.type in ("ResNet", "ResNeXt"):
        return [4 * 2 ** i for i in bb.get("out_indices", (0, 1, 2, 3))]
    if bb.type == "CSPDarknet":
        return [2 ** (i + 1) for i in bb.get("out_indices", (2, 3, 4))]
    if bb.type == "EfficientNet":  # mmdet's layers: stem, then stages at strides 2, 4, 8, 16, 32, and the 1x1 head
        return [(2, 2, 4, 8, 16, 32, 32)[i] for i in bb.get("out_indices", (6,))]
    raise ModelError(f"unknown backbone type {bb.type!r}: cannot tell its output strides.")


def head_strides(cfg) -> list[int]:
    """Strides of the feature maps the head takes (a two-stage detector: its RPN's, which covers
    the RoI heads' levels too: Faster R-CNN's RPN on P2-P6, its RoI extractor on P2-P5)."""
    head = cfg.model.get("bbox_head") or cfg.model.rpn_head
    if "anchor_generator" in head:
        return list(head.anchor_generator.strides)
    return list(head.strides)


def level_names(strides) -> tuple[str, ...]:
    """``[8, 16, 32]`` -> ``("P3", "P4", "P5")`` (P_l has stride 2**l)."""
    return tuple(f"P{int(math.log2(s))}" for s in strides)


def neck_strides(cfg) -> list[int]:
    """Strides of the feature maps the configured neck gives the head."""
    neck, bb = cfg.model.neck, backbone_strides(cfg)
    if neck.type == "YOLOXPAFPN":
        return bb
    if neck.type == "ChannelMapper":  # every backbone output, then extra levels
        return [*bb, *(bb[-1] * 2 ** (i + 1) for i in range(neck.get("num_outs", len(bb)) - len(bb)))]
    start = neck.get("start_level", 0)
    end = neck.get("end_level", -1)
    used = bb[start:] if end == -1 else bb[start:end]
    out = list(used)
    while len(out) < neck.num_outs:
        out.append(out[-1] * 2)
    return out[:neck.num_outs]


def set_neck(cfg, preset, neck: str | None = None, **args) -> None:
    """Replace (or re-parameterise) ``cfg.model.neck``; see the module docstring.

    Args:
        neck: ``"fpn"``, ``"pafpn"``, ``"nasfpn"``, ``"bifpn"`` or ``"channel_mapper"``; ``None``
            keeps the preset's neck type (then only FPN-type necks accept arguments).
        **args: the neck's arguments (:data:`NECK_ARGS`); BiFPN's ``num_repeats`` (default 3) and
            ``fusion`` (``"fast"``, ``"softmax"``, ``"sum"``; default ``"fast"``).

    Raises:
        NeckIncompatibleError: a neck that cannot give the head's levels (NAS-FPN needs five,
            P3-P7, and only YOLOX's head can take five instead of three) or, without arguments,
            other strides than the head's.
        ModelError: unknown neck or argument, or arguments whose levels or strides differ from the
            head's.
    """
    unknown = sorted(set(args) - set(FPN_ARGS))
    if unknown:
        raise ModelError(f"unknown neck argument(s) {unknown}; the FPN arguments are {list(FPN_ARGS)}.")
    if neck is None and not args:
        return
    old = cfg.model.neck
    if neck is None:
        if old.type not in NECK_TYPES.values():
            raise ModelError(f"{preset.name}'s neck is {old.type}, which takes none of {sorted(args)}; pass "
                             f"neck='fpn' (or 'pafpn', 'nasfpn') to replace it with one that does.")
        neck = {v: k for k, v in NECK_TYPES.items()}[old.type]
    if neck not in NECK_TYPES:
        raise ModelError(f"unknown neck {neck!r}; choose one of {sorted(NECK_TYPES)}.")
    bad = sorted(set(args) - set(NECK_ARGS[neck]))
    if bad:
        raise ModelError(f"neck {neck!r} takes {list(NECK_ARGS[neck])}, not {bad}.")
    want = head_strides(cfg)
    bb = backbone_strides(cfg)
    start = args.get("start_level", bb.index(want[0]) if want[0] in bb else 0)
    num_outs = args.get("num_outs", 5 if neck == "nasfpn" and preset.arch == "yolox" else len(want))
    if preset.arch == "yolox" and num_outs != len(want) and 0 <= start < len(bb):
        # YOLOX's head takes the strides it is given: P3-P5, or P3-P7 for a five-level neck
        want = [bb[start] * 2 ** i for i in range(num_outs)]
        cfg.model.bbox_head.strides = tuple(want)
    new = {"type": NECK_TYPES[neck], "in_channels": list(old.in_channels),
           "out_channels": args.get("out_channels", old.get("out_channels", 256)),
           "start_level": start, "num_outs": num_outs}
    if neck == "nasfpn":
        if len(want) != 5:
            raise NeckIncompatibleError(f"NAS-FPN needs five levels P3-P7, but {preset.name}'s head uses "
                                        f"{len(want)} ({', '.join(level_names(want))}); choose neck 'fpn' or 'pafpn'.")
        new.update(stack_times=7, norm_cfg={"type": "BN", "requires_grad": True})
    elif neck == "bifpn":
        from fpn_lab.mmdet_adapter.bifpn import FUSIONS

        fusion = args.get("fusion", "fast")
        repeats = args.get("num_repeats", 3)
        if fusion not in FUSIONS:
            raise ModelError(f"BiFPN fusion {fusion!r} is not one of {list(FUSIONS)}.")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ModelError(f"BiFPN num_repeats must be a positive int; got {repeats!r}.")
        new.update(num_repeats=repeats, fusion=fusion)
    elif neck == "channel_mapper":  # uses every backbone output it is given: drop the ones below start_level
        if not 0 <= start < len(bb):
            raise ModelError(f"start_level {start} is outside the backbone's {len(bb)} outputs (strides {bb}).")
        indices = list(cfg.model.backbone.get("out_indices", range(len(bb))))
        cfg.model.backbone.out_indices = tuple(indices[start:])
        new = {"type": "ChannelMapper", "in_channels": list(old.in_channels)[start:], "out_channels": new["out_channels"],
               "kernel_size": 3, "norm_cfg": {"type": "BN", "requires_grad": True}, "num_outs": num_outs}
        bb, start = bb[start:], 0
    else:
        needs_extra = new["num_outs"] > len(bb) - start
        # mmdet's FPN and PAFPN default to no extra convolutions (max-pooled extra levels, Faster R-CNN's P6)
        kept = old.get("add_extra_convs", False if old.type in ("FPN", "PAFPN") else "on_input")
        new["add_extra_convs"] = args.get("add_extra_convs", kept if needs_extra else False)
        new["relu_before_extra_convs"] = args.get("relu_before_extra_convs", old.get("relu_before_extra_convs", False))
    if not 0 <= new.get("start_level", 0) < len(bb):
        raise ModelError(f"start_level {new.get('start_level', 0)} is outside the backbone's {len(bb)} outputs "
                         f"(strides {bb}).")
    if new["num_outs"] < len(bb) - new.get("start_level", 0) and neck != "nasfpn":
        raise ModelError(f"num_outs {new['num_outs']} is fewer than the {len(bb) - new.get('start_level', 0)} backbone "
                         f"levels from start_level {new.get('start_level', 0)}; raise num_outs or start_level.")
    cfg.model.neck = new
    got = neck_strides(cfg)
    if got != want:
        culprit = "start_level" if "start_level" in args else "num_outs" if "num_outs" in args else "the neck"
        error = NeckIncompatibleError if culprit == "the neck" else ModelError  # no arguments: the neck itself
        raise error(f"{culprit}: this neck gives strides {got} ({', '.join(level_names(got))}) but "
                    f"{preset.name}'s head expects {want} ({', '.join(level_names(want))}).")
    if "bbox_head" in cfg.model:
        cfg.model.bbox_head.in_channels = new["out_channels"]
    else:  # two-stage: the RPN and the RoI features take the neck's channels
        cfg.model.rpn_head.in_channels = new["out_channels"]
        cfg.model.roi_head.bbox_roi_extractor.out_channels = new["out_channels"]
        cfg.model.roi_head.bbox_head.in_channels = new["out_channels"]


def check_neck_params(params: dict) -> None:
    """A notebook run's ``neck`` (``""`` keeps the preset's, else one of :data:`NECK_TYPES`) against its
    ``image_size`` (NAS-FPN pools down to P7, stride 128, so it needs 128 px or more); absent keys are
    not checked.

    Raises:
        ParamsError: an unknown neck, or NAS-FPN below 128 px.
    """
    necks = ("", *NECK_TYPES)
    if params.get("neck") not in (None, *necks):
        raise ParamsError(f"neck: {params['neck']!r} is not one of {list(necks)} ('' keeps the preset's neck).")
    if params.get("neck") == "nasfpn" and isinstance(params.get("image_size"), int) and params["image_size"] < 128:
        raise ParamsError(f"image_size: {params['image_size']} is too small for neck: nasfpn, which needs 128 px or more "
                          "(it pools down to P7, stride 128); raise image_size or choose another neck.")
