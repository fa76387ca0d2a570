"""Training-step overhead of fpn_lab (fastai Learner + MMDetCallback) against a bare mmdet loop.

Both sides train the same model on one identical batch with the same optimiser arithmetic, same
threads; repeats are interleaved (fpn_lab block, bare block, ...) and the ratio of medians is
reported. The fpn_lab side runs ``learn.fit`` with ``make_learner(opt=...)`` over a loader that
yields that batch and times each batch from ``before_batch`` to ``after_batch``, so everything
fastai does per step (callbacks, recorder, loss smoothing, optimiser) is counted but not the
fit's one-off set-up; the bare side times ``preprocess -> detector.loss -> backward -> step ->
zero_grad`` the same way, with the fastest plain torch optimiser: ``torch.optim.AdamW`` /
``SGD`` with ``fused=True``, weight decay 0.01 except on norms and biases (what fpn_lab's
``wd_bn_bias=False`` does), gradients set to None. ``--fastai-optimizer`` puts fastai's own
``Adam`` / ``SGD`` back on the fpn_lab side (the state before ``FusedAdam`` / ``FusedSGD``).

    .venv/bin/python bench/train_step_overhead.py                      # yolox_tiny, retinanet_r18, vfnet_r50
    .venv/bin/python bench/train_step_overhead.py --fastai-optimizer   # before: fastai's optimiser
    .venv/bin/python bench/train_step_overhead.py --quick              # smoke: one preset, tiny
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import warnings  # noqa: E402

from fastai.callback.core import CancelValidException, Callback  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402

from fpn_lab.data.dataloaders import Dataset, collate, make_dataloader  # noqa: E402
from fpn_lab.data.parsers import VOCBBoxParser  # noqa: E402
from fpn_lab.data.splits import SingleSplitSplitter  # noqa: E402
from fpn_lab.data.transforms import resize_and_pad  # noqa: E402
from fpn_lab.learner.learner import make_learner  # noqa: E402
from fpn_lab.models.build import build_model  # noqa: E402
from fpn_lab.models.registry import get_preset  # noqa: E402


class SkipValidation(Callback):
    def before_validate(self):
        raise CancelValidException()


class StepTimer(Callback):
    """Wall time of each training batch, from ``before_batch`` to ``after_batch`` (all callbacks,
    forward, loss, backward and optimizer step; the fit's own set-up excluded)."""

    order = -100

    def before_fit(self):
        self.times = []

    def before_batch(self):
        self.t = time.perf_counter()

    def after_batch(self):
        self.times.append(time.perf_counter() - self.t)


class SameBatch:
    """A fastai-compatible stand-in dataset returning the same items, so every step sees one batch."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.ds[i % len(self.ds)]


def bare_optimizer(model, opt: str, lr: float, wd: float = 0.01):
    """torch's fused AdamW / SGD, decay on weights only (norm layers and biases without), as fpn_lab's defaults."""
    from fastai.torch_core import norm_bias_params

    no_wd = {id(p) for p in norm_bias_params(model)}
    groups = [{"params": [p for p in model.parameters() if id(p) not in no_wd], "weight_decay": wd},
              {"params": [p for p in model.parameters() if id(p) in no_wd], "weight_decay": 0.0}]
    if opt == "adam":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, fused=True)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, fused=True)


def bare_steps(model, images, targets, steps, opt):
    model.train()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        inputs, samples = model.preprocess(images, targets, training=True)
        loss, _ = model.detector.parse_losses(model.detector.loss(inputs, samples))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fpn_lab_steps(learn, steps):
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)
    return statistics.median(learn.step_timer.times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="yolox_tiny_pafpn_300e,retinanet_r18_fpn_1x,vfnet_r50_fpn_1x")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--opt", choices=["adam", "sgd"], default="adam", help="fpn_lab's default is adam")
    ap.add_argument("--fastai-optimizer", action="store_true", help="fastai's own Adam/SGD on the fpn_lab side")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, cProfile both sides (top functions by own time) for each preset")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.fastai_optimizer:  # the state before FusedAdam / FusedSGD replaced them in make_learner
        from functools import partial

        from fastai.optimizer import SGD, Adam

        from fpn_lab.learner import learner as learner_module

        learner_module.OPTIMIZERS.update(adam=Adam, sgd=partial(SGD, mom=0.9))
    if args.quick:
        args.presets, args.size, args.steps, args.repeats = "yolox_tiny_pafpn_300e", 64, 2, 1
    parser = VOCBBoxParser(ROOT / "data/bccd/annotations", ROOT / "data/bccd/images")
    records = parser.parse(SingleSplitSplitter())[0][: args.batch]
    side = "fastai's own" if args.fastai_optimizer else "FusedAdam/FusedSGD"
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, {args.size} px, {args.steps} steps x "
          f"{args.repeats} interleaved repeats; optimiser {args.opt} (fpn_lab side: {side}; bare: torch fused)\n")
    print("| preset | fpn_lab s/step | bare mmdet s/step | ratio |\n| --- | --- | --- | --- |")
    profiles = []
    for name in args.presets.split(","):
        torch.manual_seed(0)
        model = build_model(name, num_classes=3)
        ds = Dataset(records, resize_and_pad(args.size, get_preset(name).pad_value))
        images, targets = collate([ds[i] for i in range(len(ds))])
        same = SameBatch(ds, args.batch * args.steps)
        train = make_dataloader(same, args.batch, shuffle=False, drop_last=True)
        dls = DataLoaders(train, make_dataloader(ds, args.batch, shuffle=False, drop_last=False))
        dls.n_inp = 1
        train.dataset.tfms = ds.tfms  # make_learner reads the input size from the dataset's transform
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small-batch BatchNorm warning: same batch on both sides
            learn = make_learner(dls, model, parser.class_map, opt=args.opt, coco=False, cbs=[SkipValidation(), StepTimer()])
        opt = bare_optimizer(model, args.opt, lr=1e-4)
        ours, bare = [], []
        for _ in range(args.repeats):
            ours.append(fpn_lab_steps(learn, args.steps))
            bare.append(bare_steps(model, images, targets, args.steps, opt))
        o, b = statistics.median(ours), statistics.median(bare)
        print(f"| {name} | {o:.3f} | {b:.3f} | {o / b:.3f} |", flush=True)
        if args.profile:
            profiles.append((name, profile(lambda: fpn_lab_steps(learn, args.steps)),
                             profile(lambda: bare_steps(model, images, targets, args.steps, opt))))
    for name, ours, bare in profiles:
        print(f"\n### {name}: fpn_lab, {args.steps} steps, top functions by own time\n{ours}")
        print(f"### {name}: bare mmdet loop, {args.steps} steps\n{bare}")


def profile(fn, top: int = 14) -> str:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    return text[text.find("ncalls"):].rstrip()  # drop pstats' header lines


if __name__ == "__main__":
    main()
