"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): a few DDP training steps, or a
sharded evaluation of a checkpoint. Rank 0 writes what it found to OUT (JSON); the test asserts.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_check.py train OUT
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_check.py evaluate OUT CKPT
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_check.py valid_loss OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastai.callback.core import Callback  # noqa: E402

from fpn_lab import distributed  # noqa: E402
from fpn_lab.data.dataloaders import Dataset, make_dataloaders  # noqa: E402
from fpn_lab.data.parsers import VOCBBoxParser  # noqa: E402
from fpn_lab.data.splits import SingleSplitSplitter, VOCImageSetSplitter  # noqa: E402
from fpn_lab.data.transforms import aug_tfms, resize_and_pad  # noqa: E402
from fpn_lab.runner.context import set_seed  # noqa: E402


class SeenImages(Callback):
    """Records the image ids of every training batch this process gets."""

    def __init__(self):
        self.seen = []

    def before_batch(self):
        if self.training and not hasattr(self.learn, "lr_finder"):
            self.seen.append([t["image_id"] for t in self.yb[0]])


def train(out: Path) -> None:
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.models.build import build_model

    ctx = distributed.init("cpu")
    torch.set_num_threads(1)
    set_seed(0)
    parser = VOCBBoxParser(ROOT / "data" / "bccd" / "annotations", ROOT / "data" / "bccd" / "images")
    records, valid = parser.parse(VOCImageSetSplitter(ROOT / "data" / "bccd" / "ImageSets" / "Main"))
    train_ds, valid_ds = Dataset(records[:10], aug_tfms(size=64)), Dataset(valid[:5], resize_and_pad(64))
    dls = make_dataloaders(train_ds, valid_ds, 2, seed=0)
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    seen = SeenImages()
    # EMA and the last-epochs switch read the model: they must see the plain module under DDP too
    learn = make_learner(dls, model, parser.class_map, cbs=[seen], path=out.parent / "learner", ema=True, no_aug_epochs=1)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    params = distributed.all_gather(after)
    history = distributed.all_gather([[float(v) for v in row] for row in learn.recorder.values])
    seen_all = distributed.all_gather(seen.seen)
    wrapped = type(learn.model).__name__
    if ctx.is_main:
        out.write_text(json.dumps({
            "world_size": ctx.world_size, "backend": ctx.backend,
            "max_param_diff": max(float((p - params[0]).abs().max()) for p in params),
            "changed": float((after - before).abs().max()), "history": history, "seen": seen_all,
            "model_after_fit": wrapped, "train_len": len(dls.train), "valid_len": len(dls.valid)}))
    distributed.shutdown()


def evaluate(out: Path, checkpoint: Path) -> None:
    from fpn_lab.checkpoint import load_checkpoint
    from fpn_lab.inference import evaluate as evaluate_model

    ctx = distributed.init("cpu")
    torch.set_num_threads(1)
    model, _ = load_checkpoint(checkpoint)
    parser = VOCBBoxParser(ROOT / "data" / "fridge" / "annotations", ROOT / "data" / "fridge" / "images")
    records = parser.parse(SingleSplitSplitter())[0]
    ds = Dataset(records[:5], resize_and_pad(128))  # 5 images: shares of 3 and 2
    result, detections, ev = evaluate_model(model, ds, parser.class_map, batch_size=2, cocoeval=True)
    everyone = distributed.all_gather({"AP": result["AP"], "n": len(detections), "has_ev": ev is not None})
    if ctx.is_main:
        out.write_text(json.dumps({"result": result, "detections": detections, "per_rank": everyone}))
    distributed.shutdown()


def valid_loss_learner(world_note: str = ""):
    """RetinaNet R18 (its loss normalises by each process's own positives), 5 BCCD test images at
    64 px validated one per batch, every box kept (score_thr 0): the learner both the test and the
    processes build alike."""
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.models.build import build_model

    set_seed(0)
    parser = VOCBBoxParser(ROOT / "data" / "bccd" / "annotations", ROOT / "data" / "bccd" / "images")
    records, valid = parser.parse(VOCImageSetSplitter(ROOT / "data" / "bccd" / "ImageSets" / "Main"))
    dls = make_dataloaders(Dataset(records[:8], aug_tfms(size=64)), Dataset(valid[:5], resize_and_pad(64)), 4,
                           valid_batch_size=1, seed=0)
    model = build_model("retinanet_r18_fpn_1x", num_classes=len(parser.class_map),
                        cfg_options={"model.test_cfg.score_thr": 0.0})  # boxes to score, untrained
    return make_learner(dls, model, parser.class_map)


def valid_loss(out: Path) -> None:
    ctx = distributed.init("cpu")
    torch.set_num_threads(1)
    learn = valid_loss_learner()
    with learn.no_bar(), learn.no_logging():
        loss, ap, ap50 = (float(v) for v in learn.validate())
    shares = distributed.all_gather([len(learn.dls.valid), getattr(learn.dls.valid, "real", None)])
    if ctx.is_main:
        out.write_text(json.dumps({"valid_loss": loss, "AP": ap, "AP50": ap50, "shares": shares,
                                   "detections": learn.metrics[0].acc.detections}))
    distributed.shutdown()


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        train(out)
    elif mode == "valid_loss":
        valid_loss(out)
    else:
        evaluate(out, Path(sys.argv[3]))
