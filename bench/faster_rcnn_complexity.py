"""Faster R-CNN R50-FPN as built here against torchvision's published figures (issue #28).

torchvision's ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta`` records the same architecture's parameter
count (91 classes, frozen BatchNorm) and GFLOPS. This builds fpn_lab's ``faster_rcnn_r50_fpn_1x`` (80
classes, from scratch), counts its parameters, its FLOPs on one 800 x 800 image with mmengine's counter
(fvcore's convention: a fused multiply-add is one FLOP; both stages, the RoI head on the proposals the
untrained RPN keeps), and torchvision's own model built without weights at 81 classes.

    .venv/bin/python bench/faster_rcnn_complexity.py | tee bench/logs/faster_rcnn_complexity.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fpn_lab.mmdet_adapter.complexity import count_flops  # noqa: E402
from fpn_lab.models.build import build_model  # noqa: E402


def main() -> None:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ours = build_model("faster_rcnn_r50_fpn_1x", num_classes=80)
    meta = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
    flops = count_flops(ours, 800)
    print(f"parameters: fpn_lab {count(ours):,} | torchvision built at 81 classes {count(tv):,} | torchvision's "
          f"published {meta['num_params']:,} (91 classes, frozen BatchNorm)")
    print(f"FLOPs at 800 x 800: fpn_lab {flops['flops'] / 1e9:.2f} G (neck {flops['neck_flops'] / 1e9:.2f} G) | "
          f"torchvision's published {meta['_ops']} GFLOPS")
    print(f"not counted by the tracer (no FLOPs rule): {', '.join(flops['uncounted_ops'])}")


if __name__ == "__main__":
    main()
