"""Inference: images per second and peak memory of fpn_lab's batched prediction against mmdet's
own ``DetInferencer``, on the same images, model and weights.

Each side runs in its own process (so each peak resident set is its own), interleaved over
``--repeats``: fpn_lab's ``predict_images`` (decode, letterbox, batch, predict, boxes back to
original pixels) and ``DetInferencer`` (mmdet's test pipeline: load, keep-ratio resize, pad 114,
pack, batch, predict). Both get the same file paths, batch size and checkpoint; the one-off
set-up (imports, model build, weight load) and a warm-up batch are excluded from the timing.
Detections are compared box by box: the two paths must agree for the comparison to mean
anything.

    .venv/bin/python bench/inference.py                       # demo checkpoint if present, BCCD test
    .venv/bin/python bench/inference.py --weights runs/<run>/model.pth
    .venv/bin/python bench/inference.py --quick               # smoke: untrained model, 4 images, 64 px
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def side_fpn_lab(args, paths):
    from fpn_lab.checkpoint import load_checkpoint
    from fpn_lab.inference import predict_images

    model, _ = load_checkpoint(args.ckpt)
    model.eval()
    predict_images(model, paths[: args.batch], image_size=args.size, batch_size=args.batch)  # warm-up
    before = peak_rss_mb()
    t = time.perf_counter()
    preds = predict_images(model, paths, image_size=args.size, batch_size=args.batch)
    seconds = time.perf_counter() - t
    out = [{"boxes": p["boxes"].tolist(), "scores": p["scores"].tolist(), "labels": p["labels"].tolist()} for p in preds]
    return seconds, before, out


def side_mmdet(args, paths):
    import torch

    import fpn_lab.mmdet_adapter  # noqa: F401  (mmcv's operators under mmcv-lite, before mmdet imports mmcv.ops)
    from mmdet.apis import DetInferencer
    from mmengine.config import Config

    # the config fpn_lab built (kept in its checkpoint as plain types), with mmdet's test pipeline at
    # --size; no fpn_lab model is built in this process, so its peak memory is mmdet's alone
    cfg = Config(torch.load(args.ckpt, map_location="cpu", weights_only=True)["config"])
    size = (args.size, args.size)
    cfg.test_dataloader = dict(dataset=dict(pipeline=[
        dict(type="LoadImageFromFile"), dict(type="Resize", scale=size, keep_ratio=True),
        dict(type="Pad", pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]))
    mmdet_ckpt = Path(args.ckpt).with_suffix(".mmdet.pth")
    inferencer = DetInferencer(model=cfg, weights=str(mmdet_ckpt), device="cpu", palette="random", show_progress=False)
    kwargs = dict(batch_size=args.batch, return_datasamples=True, no_save_vis=True, no_save_pred=True, out_dir="")
    inferencer(paths[: args.batch], **kwargs)  # warm-up
    before = peak_rss_mb()
    t = time.perf_counter()
    res = inferencer(paths, **kwargs)
    seconds = time.perf_counter() - t
    out = []
    for s in res["predictions"]:
        inst = s.pred_instances
        order = inst.scores.argsort(descending=True)
        out.append({"boxes": inst.bboxes[order].tolist(), "scores": inst.scores[order].tolist(),
                    "labels": inst.labels[order].tolist()})
    return seconds, before, out


def child(args):
    paths = json.loads(Path(args.paths).read_text())
    import torch

    seconds, before, preds = (side_fpn_lab if args.side == "fpn_lab" else side_mmdet)(args, paths)
    print(json.dumps({"side": args.side, "images": len(paths), "seconds": seconds, "img_per_s": len(paths) / seconds,
                      "peak_rss_mb": peak_rss_mb(), "peak_rss_before_timed_mb": before,
                      "threads": torch.get_num_threads(), "predictions": preds}))


def prepare(args, tmp: Path):
    """Checkpoint in both formats (fpn_lab's and mmdet's ``state_dict`` + ``dataset_meta``) and the image list."""
    import torch

    from fpn_lab.checkpoint import load_checkpoint, save_checkpoint
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import VOCImageSetSplitter
    from fpn_lab.models.build import build_model

    root = ROOT / "data/bccd"
    parser = VOCBBoxParser(root / "annotations", root / "images")
    _, test = parser.parse(VOCImageSetSplitter(root / "ImageSets" / "Main", ["trainval", "test"]))
    paths = [str(r.filepath) for r in test][: args.images]
    if args.weights:
        model, info = load_checkpoint(args.weights, class_map=parser.class_map)
        source = str(args.weights)
    else:
        torch.manual_seed(0)
        model, source = build_model(args.preset, num_classes=len(parser.class_map)), "untrained (seed 0)"
    ckpt = save_checkpoint(tmp / "model.pth", model, parser.class_map, image_size=args.size)
    torch.save({"state_dict": model.detector.state_dict(), "meta": {"dataset_meta": {"classes": parser.class_map.names}}},
               ckpt.with_suffix(".mmdet.pth"))
    (tmp / "paths.json").write_text(json.dumps(paths))
    return ckpt, tmp / "paths.json", source, model.preset.name, test[: args.images], parser.class_map.names


def agreement(a, b, min_score: float = 0.3) -> tuple[float, float]:
    """Of side a's detections scoring >= ``min_score``: the fraction with a same-label detection on
    side b at IoU >= 0.95, and the largest score difference of those matches."""
    import torch
    from torchvision.ops import box_iou

    matched = total = 0
    score_diff = 0.0
    for pa, pb in zip(a, b):
        ba, sa, la = (torch.tensor(pa[k], dtype=torch.float64) for k in ("boxes", "scores", "labels"))
        bb, sb, lb = (torch.tensor(pb[k], dtype=torch.float64) for k in ("boxes", "scores", "labels"))
        keep = sa >= min_score
        ba, sa, la = ba[keep].reshape(-1, 4), sa[keep], la[keep]
        total += len(ba)
        if not len(ba) or not len(bb):
            continue
        iou = box_iou(ba, bb.reshape(-1, 4)) * (la[:, None] == lb[None, :])
        best, j = iou.max(1)
        ok = best >= 0.95
        matched += int(ok.sum())
        if ok.any():
            score_diff = max(score_diff, float((sa[ok] - sb[j[ok]]).abs().max()))
    return matched / max(total, 1), score_diff


def coco_ap(records, class_names, preds) -> tuple[float, float]:
    """AP and AP50 of one side's predictions with fpn_lab's COCO evaluation (pycocotools)."""
    import numpy as np

    from fpn_lab.metrics.coco import detections_to_coco, score_detections

    dets = [d for r, p in zip(records, preds)
            for d in detections_to_coco(r.image_id, np.asarray(p["boxes"]).reshape(-1, 4), p["scores"], p["labels"], class_names)]
    res = score_detections(records, dets, class_names)[0]
    return res["AP"], res["AP50"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, help="fpn_lab checkpoint (default: the newest runs/*/model.pth, else untrained)")
    ap.add_argument("--preset", default="yolox_tiny_pafpn_300e")
    ap.add_argument("--images", type=int, default=72)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side", choices=["fpn_lab", "mmdet"], help=argparse.SUPPRESS)  # child process
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        child(args)
        return
    if args.quick:
        args.images, args.size, args.batch, args.repeats, args.weights = 4, 64, 2, 1, None
    elif args.weights is None:
        found = sorted(ROOT.glob("runs/*yolox_tiny*/model.pth"), key=lambda p: p.stat().st_mtime)
        args.weights = found[-1] if found else None
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        ckpt, paths, source, preset, records, class_names = prepare(args, Path(tmp))
        runs = {"fpn_lab": [], "mmdet": []}
        for _ in range(args.repeats):
            for side in runs:
                cmd = [sys.executable, __file__, "--side", side, "--ckpt", str(ckpt), "--paths", str(paths),
                       "--size", str(args.size), "--batch", str(args.batch)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    f, m = runs["fpn_lab"], runs["mmdet"]
    same, score_diff = agreement(f[0]["predictions"], m[0]["predictions"])
    print(f"{preset}, weights: {source}; {f[0]['images']} BCCD test images, {args.size} px, batch {args.batch}, "
          f"torch threads {f[0]['threads']}, {args.repeats} interleaved repeats (one process per side and repeat)\n")
    print("| | images/s (median) | peak RSS MiB (process) | peak RSS before the timed loop | detections | "
          "AP / AP50 (fpn_lab's COCO evaluation) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in (("fpn_lab predict_images", f), ("mmdet DetInferencer", m)):
        ap, ap50 = coco_ap(records, class_names, rs[0]["predictions"])
        print(f"| {name} | {statistics.median(r['img_per_s'] for r in rs):.1f} | "
              f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | "
              f"{statistics.median(r['peak_rss_before_timed_mb'] for r in rs):.0f} | "
              f"{sum(len(p['boxes']) for p in rs[0]['predictions'])} | {ap:.4f} / {ap50:.4f} |")
    # fpn_lab clips boxes to the image (Geometry.to_original); mmdet's YOLOX rescale does not
    clipped = [{**p, "boxes": [[min(max(x1, 0), r.width), min(max(y1, 0), r.height), min(max(x2, 0), r.width),
                                min(max(y2, 0), r.height)] for x1, y1, x2, y2 in p["boxes"]]}
               for r, p in zip(records, m[0]["predictions"])]
    same_c, score_diff_c = agreement(f[0]["predictions"], clipped)
    ap, ap50 = coco_ap(records, class_names, clipped)
    print(f"| mmdet DetInferencer, boxes clipped to the image | | | | | {ap:.4f} / {ap50:.4f} |")
    ratio = statistics.median(r["img_per_s"] for r in f) / statistics.median(r["img_per_s"] for r in m)
    print(f"\nfpn_lab / mmdet images per second: {ratio:.3f}. Of fpn_lab's detections scoring >= 0.3, "
          f"{100 * same:.1f} % have a same-label mmdet detection at IoU >= 0.95, {100 * same_c:.1f} % once mmdet's "
          f"boxes are clipped to the image as fpn_lab's are (largest score difference {max(score_diff, score_diff_c):.4f}).")


if __name__ == "__main__":
    main()
