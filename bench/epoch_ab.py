"""Time one training epoch (30 steps of YOLOX-tiny, 320 px, 2 threads, after a warm-up epoch) with the fpn_lab found at
PATH, to compare two checkouts on the same machine:  .venv/bin/python bench/epoch_ab.py PATH  (a git worktree of the
older commit, then this one, interleaved)."""
import sys, time
sys.path.insert(0, sys.argv[1])
import torch
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.parsers import VOCBBoxParser
from fpn_lab.data.splits import VOCImageSetSplitter
from fpn_lab.data.transforms import aug_tfms, resize_and_pad
from fpn_lab.learner.learner import make_learner
from fpn_lab.models.build import build_model, place_model
from fpn_lab.runner.context import set_seed
import fpn_lab; print(fpn_lab.__file__)
torch.set_num_threads(2)
R = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "bccd")
set_seed(0)
p = VOCBBoxParser(R+'/annotations', R+'/images')
tr, va = p.parse(VOCImageSetSplitter(R+'/ImageSets/Main'))
dls = make_dataloaders(Dataset(tr[:120], aug_tfms(size=320)), Dataset(va[:8], resize_and_pad(320)), 4, seed=0)
m = place_model(build_model('yolox_tiny_pafpn_300e', num_classes=3), 'cpu', channels_last=True)
learn = make_learner(dls, m, p.class_map)
with learn.no_bar(), learn.no_logging():
    learn.fit(1, 1e-3)  # warm-up
    t = time.perf_counter(); learn.fit(1, 1e-3); print('epoch s', round(time.perf_counter() - t, 2))
