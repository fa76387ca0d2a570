"""FLOPs with mmengine's counter, and prediction latency."""

from __future__ import annotations

import statistics
import time

import torch


class _WithSamples(torch.nn.Module):
    """``detector(inputs, samples, mode="tensor")`` as a one-argument module (the tracer takes tensors only)."""

    def __init__(self, detector, samples):
        super().__init__()
        self.detector, self.samples = detector, samples

    def forward(self, inputs):
        return self.detector(inputs, self.samples, mode="tensor")


@torch.no_grad()
def count_flops(model, image_size: int) -> dict:
    """Forward FLOPs of the whole detector (backbone, neck, head; no post-processing) for one
    ``3 x image_size x image_size`` input, counted by ``mmengine.analysis.get_model_complexity_info``
    (fvcore's counting: one fused multiply-add = one FLOP).

    Returns ``{"flops": total, "neck_flops": the neck's share, "params": count, "uncounted_ops":
    [...]}``. The counter has no handler for mmcv's deformable convolutions (``mdconv`` presets,
    VFNet's head), which are then counted as 0: those totals are lower bounds; ``uncounted_ops``
    names what was skipped. A two-stage detector (Faster R-CNN) is counted on a mid-grey image
    through both stages: its RoI head's share grows with the proposals the RPN keeps (at most its
    ``test_cfg.rpn.max_per_img``, 1000 in mmdet's configs), so it depends on the weights.
    """
    from mmengine.analysis import FlopAnalyzer

    model.eval()
    if model.two_stage:  # the RPN's proposals need the image's shapes (the data samples)
        from fpn_lab.data.transforms import Letterbox

        img, _, g = Letterbox(image_size, model.pad_value)(torch.full((image_size, image_size, 3), 114,
                                                                         dtype=torch.uint8).numpy())
        batch = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous().to(next(model.parameters()).device)
        inputs, samples = model.predict_inputs(batch, [g])
        network, args, neck = _WithSamples(model.detector, samples), (inputs,), "detector.neck"
    else:
        network, neck = model.detector, "neck"
        args = (torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device),)
    analyzer = FlopAnalyzer(network, args)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = analyzer.by_module()
    return {"flops": int(analyzer.total()), "neck_flops": int(by_module.get(neck, 0)),
            "params": sum(p.numel() for p in model.parameters()),
            "uncounted_ops": sorted(analyzer.unsupported_ops())}


@torch.no_grad()
def latency_ms(model, image_size: int, repeats: int = 5) -> float:
    """Median milliseconds of ``predict`` (with post-processing) on one letterboxed image."""
    from fpn_lab.data.transforms import Letterbox

    lb = Letterbox(image_size, model.preset.pad_value)
    img, _, g = lb(torch.zeros(image_size, image_size, 3, dtype=torch.uint8).numpy())
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous().to(next(model.parameters()).device)
    model.eval()
    model.predict(batch, [g])  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(batch, [g])
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)
