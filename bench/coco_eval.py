"""COCO box evaluation: pycocotools against faster-coco-eval on the same detections.

Detections are BCCD test ground truth jittered (random shifts and scales, scores, false
positives), seeded, so both libraries see realistic, identical input. Reports median time of
each and the largest difference over the 12 stats; the bar for switching is 1e-6.

    .venv/bin/python bench/coco_eval.py            # 72 test images x 20 copies
    .venv/bin/python bench/coco_eval.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpn_lab.data.parsers import VOCBBoxParser  # noqa: E402
from fpn_lab.data.splits import SingleSplitSplitter  # noqa: E402
from fpn_lab.metrics.coco import records_to_coco  # noqa: E402


def detections(records, copies, rng):
    out, images = [], []
    for c in range(copies):
        for r in records:
            image_id = r.record_id + c * 10_000
            images.append(image_id)
            for b, lab in zip(r.boxes, r.labels):
                w, h = b[2] - b[0], b[3] - b[1]
                jit = rng.normal(0, 0.08, 4) * [w, h, w, h]
                x1, y1, x2, y2 = b + jit
                out.append({"image_id": int(image_id), "category_id": int(lab) + 1, "score": float(rng.uniform(0.3, 1)),
                            "bbox": [float(x1), float(y1), float(max(1, x2 - x1)), float(max(1, y2 - y1))]})
            for _ in range(3):  # false positives
                x, y = rng.uniform(0, 600), rng.uniform(0, 440)
                out.append({"image_id": int(image_id), "category_id": int(rng.integers(1, 4)), "score": float(rng.uniform(0, 0.5)),
                            "bbox": [x, y, float(rng.uniform(10, 60)), float(rng.uniform(10, 60))]})
    return out


def gt_copies(records, names, copies):
    gt = records_to_coco(records, names)
    images, anns = [], []
    for c in range(copies):
        for im in gt["images"]:
            images.append({**im, "id": im["id"] + c * 10_000})
        for a in gt["annotations"]:
            anns.append({**a, "id": len(anns) + 1, "image_id": a["image_id"] + c * 10_000})
    return {"images": images, "annotations": anns, "categories": gt["categories"]}


def run_pycocotools(gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        ev = COCOeval(g, g.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return np.array(ev.stats)


def run_faster(gt, dets):
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(copy.deepcopy(gt))
        ev = COCOeval_faster(g, g.loadRes(copy.deepcopy(dets)), "bbox", print_function=lambda *a: None)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return np.array(ev.stats[:12])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.copies, args.repeats = 1, 1
    parser = VOCBBoxParser(ROOT / "data/bccd/annotations", ROOT / "data/bccd/images")
    records = parser.parse(SingleSplitSplitter())[0][:72]
    gt = gt_copies(records, parser.class_map.names, args.copies)
    dets = detections(records, args.copies, np.random.default_rng(0))
    times = {"pycocotools": [], "faster-coco-eval": []}
    stats = {}
    for _ in range(args.repeats):
        for name, fn in (("pycocotools", run_pycocotools), ("faster-coco-eval", run_faster)):
            t = time.perf_counter()
            stats[name] = fn(gt, dets)
            times[name].append(time.perf_counter() - t)
    diff = float(np.abs(stats["pycocotools"] - stats["faster-coco-eval"]).max())
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} boxes, {len(dets)} detections\n")
    print("| library | median s | AP | AP50 |\n| --- | --- | --- | --- |")
    for name in times:
        print(f"| {name} | {statistics.median(times[name]):.3f} | {stats[name][0]:.6f} | {stats[name][1]:.6f} |")
    print(f"\nlargest |difference| over the 12 stats: {diff:.2e} ({'identical within 1e-6' if diff <= 1e-6 else 'NOT identical'})")


if __name__ == "__main__":
    main()
