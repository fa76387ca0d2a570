"""EfficientDet's class and box networks as an mmdet dense head.

Tan, Pang and Le, "EfficientDet: Scalable and Efficient Object Detection", CVPR 2020
(arXiv:1911.09070). mmdet 3.3's wheel has the EfficientNet backbone but no EfficientDet head (it
lives only in its source tree's ``projects/``), so this one is fpn_lab's, registered as
``fpn_lab.EfficientDetHead`` beside ``fpn_lab.BiFPN`` (:func:`fpn_lab.mmdet_adapter.components.register`).

Each choice and its source in the paper:

* Section 3.3 and Figure 3: a class network and a box network, each a stack of ``stacked_convs``
  depthwise-separable 3x3 convolutions of ``feat_channels`` channels, followed by one more
  separable convolution that predicts ``num_anchors * num_classes`` class logits or
  ``num_anchors * 4`` box offsets. The convolutions' weights are shared across all levels.
* Section 4.1: BatchNorm (momentum 0.01, epsilon 1e-3 in the reference implementation) after each
  stacked convolution, and Swish (SiLU) activations. As in the reference implementation, the
  BatchNorm layers are not shared: each level has its own (the features' statistics differ by
  level), while the convolutions are shared.
* Section 3.4, eq. 3 and Table 1: D0 uses ``feat_channels = 64`` and ``stacked_convs = 3``
  (``D_box = D_class = 3 + floor(phi / 3)``, ``W = 64`` at ``phi = 0``).
* Section 4.1: focal loss (alpha 0.25, gamma 1.5) on the class logits, whose bias starts at the
  prior probability 0.01 (RetinaNet's initialisation, Lin et al. 2017); 9 anchors per position
  (3 scales x 3 aspect ratios) on P3-P7, anchor size 4 x the stride.

Everything else (anchor targets, box coding, the losses' reduction, decoding and NMS) is mmdet's
``AnchorHead``, which this class extends.
"""

from __future__ import annotations

import math

import torch
from mmdet.models.dense_heads.anchor_head import AnchorHead
from torch import nn

from fpn_lab.mmdet_adapter.bifpn import norm_layer


class SeparableConv(nn.Module):
    """Depthwise 3x3 convolution then pointwise 1x1 convolution with a bias: ``float[B, C_in, H, W]``
    -> ``float[B, C_out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class EfficientDetHead(AnchorHead):
    """EfficientDet's class and box networks (see the module docstring for the paper's choices).

    Args:
        num_classes: classes, without background.
        in_channels: channels of every input level (the BiFPN's ``out_channels``; D0: 64).
        num_levels: input levels (P3-P7: 5); each gets its own BatchNorm layers.
        stacked_convs: separable convolutions before each prediction (D0: 3).
        feat_channels: channels of those convolutions (D0: 64).
        norm_cfg: ``None`` for EfficientDet's ``BatchNorm2d(momentum=0.01, eps=1e-3)``, or an mmcv
            normalisation config (``{"type": "GN", "num_groups": 16}``...).
        **kwargs: :class:`mmdet.models.dense_heads.AnchorHead`'s arguments (anchor generator, box
            coder, losses, train and test settings).

    ``forward(feats)`` takes a tuple of ``num_levels`` maps ``float[B, in_channels, H_l, W_l]`` and
    returns ``(cls_scores, bbox_preds)``: per level ``float[B, A * num_classes, H_l, W_l]`` logits and
    ``float[B, A * 4, H_l, W_l]`` box deltas, ``A`` anchors per position, as ``AnchorHead`` decodes them.

    Raises:
        ValueError: ``num_levels`` or ``stacked_convs`` below 1.
    """

    def __init__(self, num_classes: int, in_channels: int, *, num_levels: int = 5, stacked_convs: int = 3,
                 feat_channels: int = 64, norm_cfg: dict | None = None, init_cfg=None, **kwargs):
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"EfficientDetHead num_levels must be a positive int; got {num_levels!r}.")
        if isinstance(stacked_convs, bool) or not isinstance(stacked_convs, int) or stacked_convs < 1:
            raise ValueError(f"EfficientDetHead stacked_convs must be a positive int; got {stacked_convs!r}.")
        self.num_levels, self.stacked_convs, self.norm_cfg = num_levels, stacked_convs, norm_cfg
        super().__init__(num_classes, in_channels, feat_channels=feat_channels, init_cfg=init_cfg, **kwargs)

    def _init_layers(self) -> None:
        def tower() -> nn.ModuleList:
            return nn.ModuleList(SeparableConv(self.in_channels if i == 0 else self.feat_channels, self.feat_channels)
                                 for i in range(self.stacked_convs))

        def norms() -> nn.ModuleList:  # [level][conv]: one BatchNorm per level and layer
            return nn.ModuleList(nn.ModuleList(norm_layer(self.feat_channels, self.norm_cfg)
                                               for _ in range(self.stacked_convs)) for _ in range(self.num_levels))

        self.cls_convs, self.reg_convs = tower(), tower()
        self.cls_norms, self.reg_norms = norms(), norms()
        self.efficientdet_cls = SeparableConv(self.feat_channels, self.num_base_priors * self.cls_out_channels)
        self.efficientdet_reg = SeparableConv(self.feat_channels, self.num_base_priors * 4)
        self.act = nn.SiLU()

    def init_weights(self) -> None:
        """PyTorch's default initialisation for the convolutions, zero biases, and the class logits'
        bias at ``-log((1 - 0.01) / 0.01)``, so every anchor starts at probability 0.01."""
        super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.efficientdet_cls.pointwise.bias, -math.log((1 - 0.01) / 0.01))

    def _tower(self, x: torch.Tensor, convs: nn.ModuleList, norms: nn.ModuleList) -> torch.Tensor:
        for conv, norm in zip(convs, norms):
            x = self.act(norm(conv(x)))
        return x

    def forward(self, x: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if len(x) != self.num_levels:
            raise ValueError(f"EfficientDetHead has BatchNorm layers for {self.num_levels} levels; got {len(x)} "
                             "feature maps.")
        cls_scores, bbox_preds = [], []
        for level, feat in enumerate(x):
            cls_scores.append(self.efficientdet_cls(self._tower(feat, self.cls_convs, self.cls_norms[level])))
            bbox_preds.append(self.efficientdet_reg(self._tower(feat, self.reg_convs, self.reg_norms[level])))
        return cls_scores, bbox_preds
