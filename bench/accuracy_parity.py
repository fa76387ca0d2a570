"""Accuracy parity and epoch time: fpn_lab's trainer against MMDetection's own (mmengine ``Runner``).

One run per process (``--trainer``, ``--recipe``, ``--seed``), written as JSON to ``--out``:
per-epoch training seconds, the data-wait share of each step, COCO AP / AP50 on BCCD test after
every epoch, wall-clock seconds since training began (time-to-AP) and the final COCO stats.
``--summary DIR`` reads every run there and prints the tables of ``bench/RESULTS.md``.

Recipes:

* ``matched`` (both trainers): the demo's settings, expressed in each trainer's own terms.
  fpn_lab: ``make_learner(opt="adam")`` + ``fit_one_cycle`` (fastai Adam, decoupled weight decay
  0.01 without decay on norms and biases, eps 1e-5, betas (0.95..0.85..0.95, 0.99), one-cycle
  lr, 25 % warm-up, ``div=25``, ``div_final=1e5``) and ``aug_tfms``. mmdet: ``AdamW`` with the
  same values and ``paramwise_cfg`` norm/bias decay 0, a hook setting lr and beta1 every
  iteration from fastai's own ``combined_cos`` (so the schedule is identical, not approximated),
  and mmdet's transforms for the same augmentation (flip 0.5, ``RandomAffine`` scale 0.75..1.25
  and translate 0.1, ``YOLOXHSVRandomAug``, keep-ratio resize, pad 114). No EMA, no mosaic, no
  mode switch on either side; incomplete last batch dropped on both.
* ``mmdet`` (mmdet only): the preset config's own YOLOX recipe compressed to ``--epochs``:
  Mosaic + RandomAffine (0.5..1.5) + HSV + flip at 320 px, SGD nesterov lr 0.01 (batch 8, not
  auto-scaled), wd 5e-4 without decay on norms and biases, quadratic warm-up for 10 % of the
  epochs, cosine to 0.05 lr, the last 25 % of the epochs without mosaic (``YOLOXModeSwitchHook``),
  EMA (``ExpMomentumEMA`` 1e-4). BatchSyncRandomResize is off (fixed 320 px on both sides).

Both trainers: same model config (``build_model(...).cfg``: mmdet's yolox_tiny with 3 classes,
from scratch), BCCD ``trainval`` -> ``test``, 320 px, batch 8, ``num_workers=0`` (the default on
2 cores), evaluated after every epoch with pycocotools on the same ground truth
(``records_to_coco``); the mmdet model is also evaluated at the end through fpn_lab's own
``evaluate`` to check that the two metric paths agree.

    .venv/bin/python bench/accuracy_parity.py --trainer fpn_lab --seed 0 --out bench/logs/parity/fpn_lab-matched-s0.json
    .venv/bin/python bench/accuracy_parity.py --trainer mmdet --recipe matched --seed 0 --out ...
    .venv/bin/python bench/accuracy_parity.py --summary bench/logs/parity
    .venv/bin/python bench/accuracy_parity.py --trainer mmdet --quick --out /tmp/q.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_bccd(quick: bool):
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import VOCImageSetSplitter

    root = ROOT / "data/bccd"
    parser = VOCBBoxParser(root / "annotations", root / "images")
    train, valid = parser.parse(VOCImageSetSplitter(root / "ImageSets" / "Main", ["trainval", "test"]))
    if quick:
        train, valid = train[:16], valid[:4]
    return parser.class_map, train, valid


class EpochLog:
    """Per-epoch times and metrics shared by both trainers' hooks (seconds from ``time.perf_counter``)."""

    def __init__(self):
        self.t0 = None
        self.epochs = []
        self._epoch = None
        self._last_end = None

    def start_epoch(self):
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        self._epoch = {"train_s": None, "steps": 0, "data_wait_s": 0.0, "step_s": 0.0, "_start": now}
        self._last_end = now

    def before_step(self):
        now = time.perf_counter()
        self._epoch["data_wait_s"] += now - self._last_end
        self._step_start = now

    def after_step(self):
        now = time.perf_counter()
        self._epoch["step_s"] += now - self._step_start
        self._epoch["steps"] += 1
        self._last_end = now

    def end_train(self):
        self._epoch["train_s"] = time.perf_counter() - self._epoch.pop("_start")

    def end_epoch(self, ap, ap50):
        e = self._epoch
        e.update(epoch=len(self.epochs) + 1, AP=float(ap), AP50=float(ap50), elapsed_s=time.perf_counter() - self.t0)
        e["data_wait_share"] = e["data_wait_s"] / max(e["data_wait_s"] + e["step_s"], 1e-9)
        self.epochs.append(e)


# --------------------------------------------------------------------------------------------- fpn_lab
def run_fpn_lab(args, class_map, train_records, valid_records):
    from fastai.callback.core import Callback
    from fastai.torch_core import set_seed

    from fpn_lab.data.dataloaders import Dataset, make_dataloaders
    from fpn_lab.data.transforms import aug_tfms, resize_and_pad
    from fpn_lab.inference import evaluate
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.models.build import build_model
    from fpn_lab.models.registry import get_preset

    preset = get_preset(args.preset)
    set_seed(args.seed)
    train_ds = Dataset(train_records, aug_tfms(args.size, pad_value=preset.pad_value))
    valid_ds = Dataset(valid_records, resize_and_pad(args.size, pad_value=preset.pad_value))
    dls = make_dataloaders(train_ds, valid_ds, args.batch)
    model = build_model(preset, num_classes=len(class_map))
    log = EpochLog()

    class Timing(Callback):
        order = -100  # first: the step time covers every other callback

        def before_epoch(self):
            log.start_epoch()

        def before_batch(self):
            if self.training:
                log.before_step()

        def after_batch(self):
            if self.training:
                log.after_step()

        def before_validate(self):
            log.end_train()

    class AfterMetrics(Callback):
        order = 200  # after the Recorder has the epoch's metric values

        def after_epoch(self):
            names = list(self.recorder.metric_names[1:-1])
            row = dict(zip(names, self.recorder.values[-1]))
            log.end_epoch(row["AP"], row["AP50"])

    learn = make_learner(dls, model, class_map, opt="adam", cbs=[Timing(), AfterMetrics()])
    with learn.no_bar():
        learn.fit_one_cycle(args.epochs, args.lr)
    result, _ = evaluate(model, valid_ds, class_map)
    aug = " ".join(f"{type(t).__name__}({t.p:g})" for t in train_ds.tfms.pipeline.transforms)
    return log, result, {"optimizer": f"{type(learn.opt).__module__.split('.')[0]}.{type(learn.opt).__name__}",
                         "augmentation": aug}


# ----------------------------------------------------------------------------------------------- mmdet
def mmdet_config(args, class_map, train_json, valid_json, work_dir):
    from fpn_lab.models.build import build_model

    cfg = build_model(args.preset, num_classes=len(class_map)).cfg  # the config fpn_lab trains
    img_dir = str(ROOT / "data/bccd/images") + "/"
    size = (args.size, args.size)
    load = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True)]
    tail = [dict(type="Resize", scale=size, keep_ratio=True),
            dict(type="Pad", pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
            dict(type="FilterAnnotations", min_gt_bbox_wh=(1, 1), keep_empty=False),
            dict(type="PackDetInputs")]
    metainfo = dict(classes=tuple(class_map.names))
    base_ds = dict(type="CocoDataset", data_root="", ann_file=str(train_json), data_prefix=dict(img=img_dir),
                   metainfo=metainfo, filter_cfg=dict(filter_empty_gt=False, min_size=1))
    if args.recipe == "matched":
        pipeline = load + [dict(type="RandomFlip", prob=0.5),
                           dict(type="RandomAffine", max_rotate_degree=0.0, max_translate_ratio=0.1,
                                scaling_ratio_range=(0.75, 1.25), max_shear_degree=0.0,
                                border_val=(114, 114, 114)),
                           dict(type="YOLOXHSVRandomAug")] + tail
        train_dataset = dict(base_ds, pipeline=pipeline)
    else:
        mix = [dict(type="Mosaic", img_scale=size, pad_val=114.0),
               dict(type="RandomAffine", scaling_ratio_range=(0.5, 1.5), border=(-size[0] // 2, -size[1] // 2)),
               dict(type="YOLOXHSVRandomAug"), dict(type="RandomFlip", prob=0.5)]
        train_dataset = dict(type="MultiImageMixDataset", dataset=dict(base_ds, pipeline=load), pipeline=mix + tail)
    test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=size, keep_ratio=True),
                     dict(type="Pad", pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
                     dict(type="LoadAnnotations", with_bbox=True),
                     dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    cfg.train_dataloader = dict(batch_size=args.batch, num_workers=0, persistent_workers=False, drop_last=True,
                                sampler=dict(type="DefaultSampler", shuffle=True), dataset=train_dataset)
    cfg.val_dataloader = dict(batch_size=args.batch, num_workers=0, persistent_workers=False, drop_last=False,
                              sampler=dict(type="DefaultSampler", shuffle=False),
                              dataset=dict(base_ds, ann_file=str(valid_json), test_mode=True, pipeline=test_pipeline))
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = dict(type="CocoMetric", ann_file=str(valid_json), metric="bbox")
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=args.epochs, val_interval=1)
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10)
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=args.seed)
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=64)
    cfg.visualizer = dict(type="DetLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")], name="visualizer")
    if args.recipe == "matched":
        cfg.optim_wrapper = dict(type="OptimWrapper",
                                 optimizer=dict(type="AdamW", lr=args.lr, betas=(0.95, 0.99), eps=1e-5, weight_decay=0.01),
                                 paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
        cfg.param_scheduler = []
        cfg.custom_hooks = []
    else:
        e, warm, last = args.epochs, max(1, round(0.1 * args.epochs)), max(1, round(0.25 * args.epochs))
        base_lr = 0.01
        cfg.optim_wrapper = dict(type="OptimWrapper",
                                 optimizer=dict(type="SGD", lr=base_lr, momentum=0.9, weight_decay=5e-4, nesterov=True),
                                 paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
        cfg.param_scheduler = [
            dict(type="mmdet.QuadraticWarmupLR", by_epoch=True, begin=0, end=warm, convert_to_iter_based=True),
            dict(type="CosineAnnealingLR", eta_min=base_lr * 0.05, begin=warm, T_max=e - last, end=e - last,
                 by_epoch=True, convert_to_iter_based=True),
            dict(type="ConstantLR", by_epoch=True, factor=1, begin=e - last, end=e)]
        cfg.custom_hooks = [dict(type="YOLOXModeSwitchHook", num_last_epochs=last, priority=48),
                            dict(type="SyncNormHook", priority=48),
                            dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=0.0001, update_buffers=True,
                                 priority=49)]
    return cfg


def run_mmdet(args, class_map, train_records, valid_records):
    from fastai.callback.schedule import combined_cos

    import fpn_lab.mmdet_adapter  # noqa: F401  (mmcv's operators under mmcv-lite, before mmdet imports mmcv.ops)
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.inference import evaluate
    from fpn_lab.metrics.coco import records_to_coco
    from fpn_lab.models.build import build_model

    work = Path(tempfile.mkdtemp(prefix="parity-mmdet-"))
    train_json, valid_json = work / "train.json", work / "valid.json"
    train_json.write_text(json.dumps(records_to_coco(train_records, class_map.names)))
    valid_json.write_text(json.dumps(records_to_coco(valid_records, class_map.names)))
    cfg = mmdet_config(args, class_map, train_json, valid_json, work)
    log = EpochLog()

    class Timing(Hook):
        priority = "VERY_HIGH"

        def before_train_epoch(self, runner):
            log.start_epoch()

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            log.before_step()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            log.after_step()

        def before_val_epoch(self, runner):
            log.end_train()

        def after_val_epoch(self, runner, metrics=None):
            # mmdet's CocoMetric returns no keys when there are no detections at all (early epochs)
            log.end_epoch(metrics.get("coco/bbox_mAP", 0.0), metrics.get("coco/bbox_mAP_50", 0.0))

    class FastaiOneCycle(Hook):
        """lr and Adam's beta1 each iteration from fastai's ``combined_cos`` (what ``fit_one_cycle`` uses)."""

        priority = "HIGH"

        def before_train(self, runner):
            self.total = runner.max_epochs * len(runner.train_dataloader)
            self.lr = combined_cos(0.25, args.lr / 25, args.lr, args.lr / 1e5)
            self.mom = combined_cos(0.25, 0.95, 0.85, 0.95)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            pos = runner.iter / self.total
            for g in runner.optim_wrapper.optimizer.param_groups:
                g["lr"] = float(self.lr(pos))
                g["betas"] = (float(self.mom(pos)), g["betas"][1])

    runner = Runner.from_cfg(cfg)
    runner.register_hook(Timing())
    if args.recipe == "matched":
        runner.register_hook(FastaiOneCycle())
    runner.train()
    # the same weights through fpn_lab's evaluation (EMA weights when the recipe has EMA: mmengine
    # swaps them in for validation; after train() the model holds the raw weights, so use the EMA copy)
    ours = build_model(args.preset, num_classes=len(class_map))
    state = runner.model.state_dict()
    ema = next((h for h in runner.hooks if type(h).__name__ == "EMAHook"), None)
    if ema is not None:
        state = {k.removeprefix("module."): v for k, v in ema.ema_model.state_dict().items() if k != "steps"}
        state = {k: v for k, v in state.items() if k in ours.detector.state_dict()}
    ours.detector.load_state_dict(state)
    valid_ds = Dataset(valid_records, resize_and_pad(args.size, pad_value=ours.preset.pad_value))
    result, _ = evaluate(ours, valid_ds, class_map)
    aug = " ".join(t["type"] for t in (cfg.train_dataloader.dataset.get("pipeline") or []) if t["type"] not in
                   ("LoadImageFromFile", "LoadAnnotations", "PackDetInputs", "FilterAnnotations"))
    return log, result, {"optimizer": f"torch.{type(runner.optim_wrapper.optimizer).__name__}", "augmentation": aug}


# --------------------------------------------------------------------------------------------- summary
def summary(folder: Path) -> None:
    """Tables over every run JSON in ``folder``. Runs named in ``folder/CONTENDED`` (one file stem a
    line, ``#`` comments) shared the CPU with other work: their accuracy counts, their times do not."""
    contended = set()
    if (folder / "CONTENDED").is_file():
        contended = {line.split("#")[0].strip() for line in (folder / "CONTENDED").read_text().splitlines()} - {""}
    runs = []
    for p in sorted(folder.glob("*.json")):
        runs.append(json.loads(p.read_text()))
        runs[-1]["timed"] = p.stem not in contended
    groups: dict[tuple, list] = {}
    for r in runs:
        if "optimizer" not in r:  # runs recorded before the field existed
            r["optimizer"] = {"fpn_lab": "fastai.Adam", "mmdet": "torch.AdamW"}[r["trainer"]] if r["recipe"] == "matched" \
                else "torch.SGD"
        if "augmentation" not in r:  # runs recorded before the field existed
            r["augmentation"] = ("HorizontalFlip(0.5) Affine(0.8) RandomBrightnessContrast(0.5) HueSaturationValue(0.5)"
                                 if r["trainer"] == "fpn_lab" else "RandomFlip RandomAffine YOLOXHSVRandomAug Resize Pad")
        groups.setdefault((r["trainer"], r["recipe"], r["optimizer"], r["augmentation"], r["epochs"]), []).append(r)

    def ms(values, fmt="{:.3f}"):
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        return (fmt + " ± " + fmt).format(statistics.mean(values), sd)

    print("| trainer | recipe | optimiser | augmentation | epochs | seeds | AP (mean ± sd) | AP50 | train s/epoch | "
          "step s | data wait s/step | data-wait share | validation s/epoch | s to AP50 >= 0.8 | total train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (trainer, recipe, optimizer, aug, epochs), rs in sorted(groups.items()):
        def to_ap50(r, bar=0.8):
            return next((e["elapsed_s"] for e in r["epoch_log"] if e["AP50"] >= bar), None)

        timed = [r for r in rs if r["timed"]] or rs
        t_epoch = [statistics.median(e["train_s"] for e in r["epoch_log"]) for r in timed]
        wait = [statistics.median(e["data_wait_share"] for e in r["epoch_log"]) for r in timed]
        step = [statistics.median(e["step_s"] / e["steps"] for e in r["epoch_log"]) for r in timed]
        wait_s = [statistics.median(e["data_wait_s"] / e["steps"] for e in r["epoch_log"]) for r in timed]
        val = [statistics.median(b["elapsed_s"] - a - b["train_s"]  # elapsed_s counts from the first epoch's start
                                 for a, b in zip([0.0] + [e["elapsed_s"] for e in r["epoch_log"]], r["epoch_log"]))
               for r in timed]
        reach = [to_ap50(r) for r in timed]
        reached = [v for v in reach if v is not None]
        print(f"| {trainer} | {recipe} | {optimizer} | {aug} | {epochs} | {','.join(str(r['seed']) for r in rs)} | "
              f"{ms([r['final']['AP'] for r in rs])} | {ms([r['final']['AP50'] for r in rs])} | "
              f"{ms(t_epoch, '{:.1f}')} | {ms(step, '{:.3f}')} | {ms(wait_s, '{:.3f}')} | {ms(wait, '{:.3f}')} | "
              f"{ms(val, '{:.1f}')} | "
              f"{ms(reached, '{:.0f}') if reached else '-'} ({len(reached)}/{len(timed)} reached) | "
              f"{ms([sum(e['train_s'] for e in r['epoch_log']) for r in timed], '{:.0f}')}"
              + (f" (times: seeds {','.join(str(r['seed']) for r in timed)})" if len(timed) < len(rs) else "") + " |")
    print("\nPer-epoch AP50 (each run):")
    for r in runs:
        print(f"- {r['trainer']}/{r['recipe']}/{r['optimizer']} seed {r['seed']}: "
              + " ".join(f"{e['AP50']:.2f}" for e in r["epoch_log"])
              + f"  (final AP {r['final']['AP']:.3f} by fpn_lab's evaluate; the trainer's own metric after the "
                f"last epoch: {r['epoch_log'][-1]['AP']:.3f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trainer", choices=["fpn_lab", "mmdet"])
    ap.add_argument("--recipe", choices=["matched", "mmdet"], default="matched")
    ap.add_argument("--preset", default="yolox_tiny_pafpn_300e")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 16 training images, 64 px, 1 epoch (4 for the mmdet recipe's phases)")
    ap.add_argument("--summary", type=Path, help="print the tables for every run JSON in this folder")
    args = ap.parse_args()
    if args.summary:
        summary(args.summary)
        return
    if not args.trainer or not args.out:
        ap.error("--trainer and --out are needed (or --summary DIR)")
    if args.trainer == "fpn_lab" and args.recipe != "matched":
        ap.error("fpn_lab trains the matched recipe only (the demo's settings)")
    if args.quick:
        args.epochs, args.size, args.batch = (4 if args.recipe == "mmdet" else 1), 64, 4
    import torch

    class_map, train, valid = load_bccd(args.quick)
    t = time.perf_counter()
    log, result, extra = (run_fpn_lab if args.trainer == "fpn_lab" else run_mmdet)(args, class_map, train, valid)
    out = {"trainer": args.trainer, "recipe": args.recipe, "preset": args.preset, "seed": args.seed,
           "epochs": args.epochs, "size": args.size, "batch": args.batch, "lr": args.lr,
           "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - t, "epoch_log": log.epochs,
           "final": {k: v for k, v in result.items() if k != "message"}, **extra}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(args.out)
    print(f"{args.trainer}/{args.recipe} seed {args.seed}: AP {result['AP']:.3f} AP50 {result['AP50']:.3f}, "
          f"{out['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
