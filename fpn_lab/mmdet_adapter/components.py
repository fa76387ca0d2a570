"""fpn_lab's own mmdet components, registered in a child registry of mmdet's ``MODELS`` (scope ``fpn_lab``),
so configs build them by name and no name of mmdet's own registry can clash with them."""

from __future__ import annotations

_REGISTERED: list = []


def register() -> None:
    """Register, once: :class:`~fpn_lab.mmdet_adapter.bifpn.BiFPN` as ``fpn_lab.BiFPN`` and
    :class:`~fpn_lab.mmdet_adapter.efficientdet.EfficientDetHead` as ``fpn_lab.EfficientDetHead``."""
    if _REGISTERED:
        return
    from mmdet.registry import MODELS
    from mmengine.registry import Registry

    from fpn_lab.mmdet_adapter.bifpn import BiFPN
    from fpn_lab.mmdet_adapter.efficientdet import EfficientDetHead

    scoped = MODELS._children.get("fpn_lab") or Registry("model", parent=MODELS, scope="fpn_lab")
    scoped.register_module(name="BiFPN", module=BiFPN, force=False)
    scoped.register_module(name="EfficientDetHead", module=EfficientDetHead, force=False)
    _REGISTERED.append(scoped)
