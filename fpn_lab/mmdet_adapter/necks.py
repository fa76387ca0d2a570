"""The neck as a choice: swap a preset's neck for FPN, PAFPN or NAS-FPN, keeping the head consistent.

A head expects feature maps at fixed strides (YOLOX: 8, 16, 32 = P3-P5; RetinaNet and VFNet: 8 ...
128 = P3-P7) with ``in_channels`` channels. :func:`set_neck` builds the new neck config from the
preset's backbone outputs, checks that it yields exactly the head's strides, and sets the head's
``in_channels`` to the neck's ``out_channels``; a conflicting argument is an error that says which
and why.
"""

from __future__ import annotations

import math

from fpn_lab.errors import ModelError, NeckIncompatibleError

#: fpn_lab neck name -> mmdet neck type.
NECK_TYPES = {"fpn": "FPN", "pafpn": "PAFPN", "nasfpn": "NASFPN"}
#: The FPN arguments a user may override (mmdet ``FPN`` / ``PAFPN``; NAS-FPN takes the first four).
FPN_ARGS = ("out_channels", "start_level", "add_extra_convs", "num_outs", "relu_before_extra_convs")


def backbone_strides(cfg) -> list[int]:
    """Strides of the backbone outputs the neck receives (ResNet: 4..32; CSPDarknet: 8..32)."""
    bb = cfg.model.backbone
    if bb.type == "ResNet":
        return [4 * 2 ** i for i in bb.get("out_indices", (0, 1, 2, 3))]
    if bb.type == "CSPDarknet":
        return [2 ** (i + 1) for i in bb.get("out_indices", (2, 3, 4))]
    raise ModelError(f"unknown backbone type {bb.type!r}: cannot tell its output strides.")


def head_strides(cfg) -> list[int]:
    head = cfg.model.bbox_head
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
        neck: ``"fpn"``, ``"pafpn"`` or ``"nasfpn"``; ``None`` keeps the preset's neck type (then
            only FPN-type necks accept the FPN arguments).
        **args: any of :data:`FPN_ARGS`.

    Raises:
        NeckIncompatibleError: a neck that cannot give the head's levels (NAS-FPN needs five,
            P3-P7) or, without arguments, other strides than the head's.
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
    if preset.arch == "yolox" and neck == "pafpn" and not args:
        return  # YOLOX's own PAFPN (YOLOXPAFPN, with CSP blocks) is already the neck
    want = head_strides(cfg)
    bb = backbone_strides(cfg)
    start = args.get("start_level", bb.index(want[0]) if want[0] in bb else 0)
    new = {"type": NECK_TYPES[neck], "in_channels": list(old.in_channels),
           "out_channels": args.get("out_channels", old.get("out_channels", 256)),
           "start_level": start, "num_outs": args.get("num_outs", len(want))}
    if neck == "nasfpn":
        if len(want) != 5:
            raise NeckIncompatibleError(f"NAS-FPN needs five levels P3-P7, but {preset.name}'s head uses "
                                        f"{len(want)} ({', '.join(level_names(want))}); choose neck 'fpn' or 'pafpn'.")
        extra = sorted(set(args) - {"out_channels", "start_level", "num_outs"})
        if extra:
            raise ModelError(f"NAS-FPN takes out_channels, start_level and num_outs, not {extra}.")
        new.update(stack_times=7, norm_cfg={"type": "BN", "requires_grad": True})
    else:
        needs_extra = new["num_outs"] > len(bb) - start
        new["add_extra_convs"] = args.get("add_extra_convs", old.get("add_extra_convs", "on_input") if needs_extra else False)
        new["relu_before_extra_convs"] = args.get("relu_before_extra_convs", old.get("relu_before_extra_convs", False))
    if not 0 <= new["start_level"] < len(bb):
        raise ModelError(f"start_level {new['start_level']} is outside the backbone's {len(bb)} outputs "
                         f"(strides {bb}).")
    if new["num_outs"] < len(bb) - new["start_level"] and neck != "nasfpn":
        raise ModelError(f"num_outs {new['num_outs']} is fewer than the {len(bb) - new['start_level']} backbone "
                         f"levels from start_level {new['start_level']}; raise num_outs or start_level.")
    cfg.model.neck = new
    got = neck_strides(cfg)
    if got != want:
        culprit = "start_level" if "start_level" in args else "num_outs" if "num_outs" in args else "the neck"
        error = NeckIncompatibleError if culprit == "the neck" else ModelError  # no arguments: the neck itself
        raise error(f"{culprit}: this neck gives strides {got} ({', '.join(level_names(got))}) but "
                    f"{preset.name}'s head expects {want} ({', '.join(level_names(want))}).")
    cfg.model.bbox_head.in_channels = new["out_channels"]
