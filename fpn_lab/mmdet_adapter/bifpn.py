"""BiFPN, the bidirectional feature pyramid of EfficientDet, as an mmdet neck.

Tan, Pang and Le, "EfficientDet: Scalable and Efficient Object Detection", CVPR 2020
(arXiv:1911.09070), section 3: each BiFPN layer runs a top-down pass and a bottom-up pass over the
levels; every node fuses its inputs with learnt, non-negative weights ("fast normalised fusion",
``O = sum_i w_i * I_i / (eps + sum_j w_j)`` with ``w = relu(w)``, their eq. 3), then applies a
depthwise-separable 3x3 convolution with BatchNorm; Swish (SiLU) is the activation before it.
Levels above the backbone's last stage (P6, P7) are made from that stage: a 1x1 convolution with
BatchNorm to ``out_channels``, then 3x3 max pooling with stride 2 per extra level. The BatchNorm
layers use EfficientDet's momentum 0.01 and epsilon 1e-3 (its reference implementation); the
``norm_cfg`` argument replaces them with another mmcv normalisation (GroupNorm, as mmdet's
from-scratch configs use in their necks), as mmdet's own necks accept.

mmdet 3.3's wheel has no BiFPN (it lives only in its source tree's ``projects/``), so this one is
fpn_lab's, registered in a child registry of mmdet's ``MODELS`` under the scope ``fpn_lab``
(:func:`fpn_lab.mmdet_adapter.components.register`): config ``type="fpn_lab.BiFPN"`` builds it,
and no name of mmdet's own registry can clash with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Fusion of a node's inputs: EfficientDet's fast normalised fusion, softmax over the weights, or a plain sum.
FUSIONS = ("fast", "softmax", "sum")


def norm_layer(channels: int, norm_cfg: dict | None = None) -> nn.Module:
    """The normalisation after each BiFPN convolution: EfficientDet's ``BatchNorm2d(momentum=0.01,
    eps=1e-3)`` when ``norm_cfg`` is ``None``, else mmcv's ``build_norm_layer(norm_cfg, channels)``
    (``{"type": "GN", "num_groups": 32}``, ``{"type": "BN"}``...).

    Raises:
        ValueError: ``norm_cfg`` is not a dict with a ``type`` (mmcv's own errors name an unknown type
            or a channel count GroupNorm cannot split).
    """
    if norm_cfg is None:
        return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)
    if not isinstance(norm_cfg, dict) or "type" not in norm_cfg:
        raise ValueError(f"BiFPN norm_cfg must be a dict with a 'type' (e.g. {{'type': 'GN', 'num_groups': 32}}) or "
                         f"None for EfficientDet's BatchNorm; got {norm_cfg!r}.")
    from mmcv.cnn import build_norm_layer

    return build_norm_layer(dict(norm_cfg), channels)[1]


class SeparableConvBN(nn.Module):
    """Depthwise 3x3 convolution, pointwise 1x1 convolution, normalisation (:func:`norm_layer`; the
    attribute keeps the name ``bn`` whatever its type): ``float[B, C, H, W]`` -> same shape."""

    def __init__(self, channels: int, norm_cfg: dict | None = None):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = norm_layer(channels, norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class FusionNode(nn.Module):
    """One BiFPN node: weighted fusion of ``num_inputs`` same-shape maps, Swish, separable conv + BN.

    Args:
        fusion: ``"fast"`` (``relu(w) / (sum(relu(w)) + eps)``, EfficientDet eq. 3), ``"softmax"``
            (``softmax(w)``) or ``"sum"`` (no weights).
        eps: the fast fusion's epsilon (EfficientDet: 1e-4).
        norm_cfg: the convolution's normalisation (:func:`norm_layer`).
    """

    def __init__(self, channels: int, num_inputs: int, fusion: str = "fast", eps: float = 1e-4,
                 norm_cfg: dict | None = None):
        super().__init__()
        self.fusion, self.eps, self.num_inputs = fusion, eps, num_inputs
        self.weight = nn.Parameter(torch.ones(num_inputs)) if fusion != "sum" else None
        self.conv = SeparableConvBN(channels, norm_cfg)

    def normalized_weights(self) -> torch.Tensor:
        """``float[num_inputs]``: the weights each input is multiplied by (non-negative, summing to
        one up to ``eps`` for ``fast``; ones for ``sum``)."""
        if self.fusion == "fast":
            w = F.relu(self.weight)
            return w / (w.sum() + self.eps)
        if self.fusion == "softmax":
            return torch.softmax(self.weight, dim=0)
        return torch.ones(self.num_inputs, device=self.conv.pointwise.weight.device)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.fusion == "sum":
            fused = torch.stack(inputs).sum(0)
        else:
            w = self.normalized_weights()
            fused = sum(wi * x for wi, x in zip(w, inputs))
        return self.conv(F.silu(fused))


class BiFPN(nn.Module):
    """EfficientDet's BiFPN neck (module docstring).

    Args:
        in_channels: channels of each backbone output, finest first (e.g. ResNet-50: ``[256, 512,
            1024, 2048]``; CSPDarknet-tiny: ``[96, 192, 384]``).
        out_channels: channels of every output level.
        num_outs: output levels: the backbone levels from ``start_level`` on, then extra levels
            (P6, P7...) by max pooling.
        start_level: first backbone output used (ResNet's stride-4 output is index 0: 1 gives P3).
        num_repeats: BiFPN layers (EfficientDet-D0: 3).
        fusion: ``"fast"``, ``"softmax"`` or ``"sum"`` (:class:`FusionNode`).
        norm_cfg: the normalisation after every convolution (:func:`norm_layer`): ``None`` for
            EfficientDet's BatchNorm, or an mmcv config such as ``{"type": "GN", "num_groups": 32}``.

    Shapes: inputs ``float[B, in_channels[i], H_i, W_i]`` with ``H_{i+1} = H_i / 2``; outputs a tuple
    of ``num_outs`` maps ``float[B, out_channels, H_l, W_l]``, finest first, each extra level
    ``ceil(H / 2)`` of the one below. Upsampling is nearest-neighbour to the exact size of the finer
    level, so any input whose side is a multiple of 32 works.
    """

    def __init__(self, in_channels: list[int], out_channels: int, num_outs: int, start_level: int = 0,
                 num_repeats: int = 3, fusion: str = "fast", norm_cfg: dict | None = None, init_cfg=None):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"BiFPN fusion must be one of {FUSIONS}; got {fusion!r}.")
        used = list(in_channels)[start_level:]
        if num_outs < len(used) or num_repeats < 1:
            raise ValueError(f"BiFPN needs num_outs >= {len(used)} (the backbone levels used) and num_repeats >= 1; "
                             f"got num_outs={num_outs}, num_repeats={num_repeats}.")
        self.start_level, self.num_outs = start_level, num_outs
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), norm_layer(out_channels, norm_cfg)) for c in used)
        self.extra = (nn.Sequential(nn.Conv2d(used[-1], out_channels, 1, bias=False), norm_layer(out_channels, norm_cfg))
                      if num_outs > len(used) else None)
        n = num_outs
        self.layers = nn.ModuleList()
        for _ in range(num_repeats):
            # top-down: levels n-2 .. 0; bottom-up: middle levels fuse three inputs, the top level two
            top_down = nn.ModuleList(FusionNode(out_channels, 2, fusion, norm_cfg=norm_cfg) for _ in range(n - 1))
            bottom_up = nn.ModuleList(FusionNode(out_channels, 3 if i < n - 1 else 2, fusion, norm_cfg=norm_cfg)
                                      for i in range(1, n))
            self.layers.append(nn.ModuleDict({"top_down": top_down, "bottom_up": bottom_up}))

    def init_weights(self) -> None:  # mmdet calls it; torch's defaults are the initialisation
        pass

    @staticmethod
    def _down(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, stride=2, padding=1)

    def forward(self, inputs) -> tuple[torch.Tensor, ...]:
        feats = list(inputs)[self.start_level:]
        levels = [lat(f) for lat, f in zip(self.laterals, feats)]
        if self.extra is not None:
            x = self._down(self.extra(feats[-1]))
            levels.append(x)
            while len(levels) < self.num_outs:
                levels.append(self._down(levels[-1]))
        for layer in self.layers:
            n = len(levels)
            td = [None] * n
            td[-1] = levels[-1]
            for k, i in enumerate(range(n - 2, -1, -1)):
                up = F.interpolate(td[i + 1], size=levels[i].shape[-2:], mode="nearest")
                td[i] = layer["top_down"][k]([levels[i], up])
            out = [td[0]]
            for i in range(1, n):
                down = self._down(out[-1])
                if down.shape[-2:] != levels[i].shape[-2:]:
                    down = F.interpolate(down, size=levels[i].shape[-2:], mode="nearest")
                ins = [levels[i], td[i], down] if i < n - 1 else [levels[i], down]
                out.append(layer["bottom_up"][i - 1](ins))
            levels = out
        return tuple(levels)
