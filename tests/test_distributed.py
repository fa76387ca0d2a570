"""Training across processes (fpn_lab.distributed): sharding, learning-rate scaling, and real runs of 2
processes under torchrun with gloo on the CPU (DDP steps, sharded evaluation, `fpn-lab run --nproc`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import DATA, ROOT
from fpn_lab import distributed
from fpn_lab.errors import ParamsError

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _torchrun(args, timeout=300):
    # PYTHONFAULTHANDLER: a process that aborts (SIGABRT from C++) prints every thread's Python stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run([*TORCHRUN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("n", [5, 10])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_lose_and_repeat_nothing(n, world):
    shares = [distributed.shard_indices(n, r, world) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("n", [1, 5, 10])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("bs", [1, 2, 4])
def test_validation_shares_have_equal_batches_and_repeat_only_to_fill_one(n, world, bs):
    """Each rank validates its own images; a rank a batch short gets one repeated image as its last batch."""
    shares, reals = [], []
    for r in range(world):
        dl = _loader(n, bs, False, False)
        dl.set_shard(r, world, pad=True)
        shares.append(list(dl.get_idxs()))
        reals.append(dl.real)
    assert len({-(-len(s) // bs) for s in shares}) == 1  # the same number of batches everywhere
    own = [s[:k] for s, k in zip(shares, reals)]
    assert sorted(i for s in own for i in s) == list(range(n))  # each image once among the own shares
    for s, k in zip(shares, reals):
        assert len(s) - k <= 1 and (len(s) == k or k % bs == 0)  # a repeat only as a batch of its own


def test_shards_follow_the_given_order_and_refuse_too_few_items():
    order = [4, 2, 0, 3, 1]
    assert distributed.shard_indices(5, 1, 2, order=order) == [2, 3]
    with pytest.raises(ParamsError, match="2 images cannot be shared by 3 processes"):
        distributed.shard_indices(2, 0, 3)
    assert distributed.shard_indices(2, 2, 3, empty_ok=True) == []
    with pytest.raises(ParamsError, match="rank 2 of world size 2"):
        distributed.shard_indices(5, 2, 2)


def _loader(n, bs, shuffle, drop_last, seed=0):
    from fpn_lab.data.dataloaders import make_dataloader

    class Items:  # only its length matters for the indices
        tfms = None

        def __len__(self):
            return n

        def __getitem__(self, i):
            return i

    return make_dataloader(Items(), bs, shuffle=shuffle, drop_last=drop_last, seed=seed)


@pytest.mark.parametrize("n, world, bs", [(10, 2, 2), (10, 3, 2), (11, 2, 3), (9, 2, 2)])
def test_sharded_training_loader_same_order_equal_steps(n, world, bs):
    dls = [_loader(n, bs, True, True) for _ in range(world)]
    for r, dl in enumerate(dls):
        dl.set_shard(r, world)
    assert {len(dl) for dl in dls} == {distributed.common_steps(n, world, bs)}
    for _ in range(2):  # two epochs: a new order each, the same in every rank
        idxs = []
        for dl in dls:
            dl.randomize()
            idxs.append(dl.get_idxs())
        flat = [i for s in idxs for i in s]
        assert len(flat) == len(set(flat))  # no image in two ranks
        assert all(len(s) == len(dls[0]) * bs for s in idxs)
    whole = _loader(n, bs, True, True)
    whole.set_shard(0, world)
    whole.set_shard(None)
    assert sorted(whole.get_idxs()) == list(range(n)) and len(whole) == n // bs


def test_sharded_loader_refuses_a_share_without_a_full_batch():
    dl = _loader(5, 2, True, True)
    with pytest.raises(ParamsError, match="fewer than batch_size 2 per process"):
        dl.set_shard(0, 3)


def test_scaled_lr_and_its_parameter():
    assert distributed.scaled_lr(1e-3, "linear", 4) == pytest.approx(4e-3)
    assert distributed.scaled_lr(1e-3, "none", 4) == 1e-3
    assert distributed.scaled_lr(1e-3, "linear") == 1e-3  # one process
    with pytest.raises(ParamsError, match="lr_scaling must be one of"):
        distributed.scaled_lr(1e-3, "sqrt", 2)
    from fpn_lab.runner.params import validate_params

    nb = ROOT / "notebooks" / "getting_started.ipynb"
    with pytest.raises(ParamsError, match="lr_scaling: 'sqrt'"):
        validate_params({"lr_scaling": "sqrt"}, nb)
    with pytest.raises(ParamsError, match="sync_bn: true needs device: cuda"):
        validate_params({"sync_bn": True, "device": "cpu"}, nb)  # device: auto is checked where it resolves


def test_one_process_is_not_a_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)
    assert distributed.broadcast({"a": 1}) == {"a": 1} and distributed.all_gather(3) == [3]
    distributed.shutdown()  # nothing to leave: no error


def test_incomplete_torchrun_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ParamsError, match="MASTER_ADDR"):
        distributed.init("cpu")


def test_root_cause_names_the_first_failing_rank(tmp_path):
    from fpn_lab.runner.worker import root_cause

    (tmp_path / "ranks").mkdir()
    reports = [{"rank": 0, "status": "failed", "ended_s": 20.0, "terminated": False,
                "error": {"ename": "DistBackendError", "evalue": "connection closed by peer", "rank": 0}},
               {"rank": 1, "status": "failed", "ended_s": 10.0, "terminated": False,
                "error": {"ename": "TrainingError", "evalue": "non-finite training loss", "rank": 1, "cell_index": 24}},
               {"rank": 2, "status": "failed", "ended_s": 5.0, "terminated": True,
                "error": {"ename": "_Terminated", "evalue": "stopped by torchrun", "rank": 2}}]
    for r in reports:
        (tmp_path / "ranks" / f"rank{r['rank']}.json").write_text(json.dumps(r))
    err = root_cause(tmp_path, 4, 1)
    assert (err["rank"], err["ename"], err["cell_index"]) == (1, "TrainingError", 24)
    assert "[0, 2, 3]" in err["evalue"]  # the others, and rank 3 that left no report
    for r in reports:
        (tmp_path / "ranks" / f"rank{r['rank']}.json").write_text(json.dumps({"rank": r["rank"], "status": "ok"}))
    assert root_cause(tmp_path, 3, 0) is None
    assert root_cause(tmp_path, 4, 1)["ename"] == "ProcessLost"


def test_ddp_steps_leave_identical_parameters(tmp_path):
    out = tmp_path / "train.json"
    _torchrun([str(ROOT / "tests" / "ddp_check.py"), "train", str(out)])
    r = json.loads(out.read_text())
    assert (r["world_size"], r["backend"]) == (2, "gloo")
    assert r["changed"] > 0  # the steps moved the weights ...
    assert r["max_param_diff"] == 0.0  # ... identically in both processes
    assert r["model_after_fit"] == "MMDetModel"  # unwrapped after the fit
    assert (r["train_len"], r["valid_len"]) == (2, 2)  # 10 images / 2 ranks / batch 2; 5 valid: 3 + 2 and a repeat
    h0, h1 = r["history"]
    assert h0 == h1 and len(h0) == 2  # the recorder's losses and AP agree across processes
    for epoch in range(2):  # the two shares of an epoch are disjoint
        a = {i for b in r["seen"][0][2 * epoch:2 * epoch + 2] for i in b}
        b = {i for b in r["seen"][1][2 * epoch:2 * epoch + 2] for i in b}
        assert len(a) == len(b) == 4 and not a & b


def test_per_epoch_loss_and_metric_under_torchrun_equal_one_process(tmp_path):
    """valid_loss under torchrun counted the image repeated to even out the shares: 6 losses for 5 images.
    The per-epoch AP was compared across processes, never with one process."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from ddp_check import valid_loss_learner

    torch.set_num_threads(1)
    learn = valid_loss_learner()
    with learn.no_bar(), learn.no_logging():
        single, ap, ap50 = (float(v) for v in learn.validate())
    out = tmp_path / "valid_loss.json"
    _torchrun([str(ROOT / "tests" / "ddp_check.py"), "valid_loss", str(out)])
    r = json.loads(out.read_text())
    assert r["valid_loss"] == pytest.approx(single, rel=1e-5)
    assert r["shares"] == [[3, 3], [3, 2]]  # 3 batches each; rank 1 has a third holding a repeat of its first image
    assert r["detections"] == learn.metrics[0].acc.detections and len(r["detections"]) >= 5
    assert (r["AP"], r["AP50"]) == (ap, ap50)


@pytest.fixture(scope="module")
def overfit_checkpoint(tmp_path_factory):
    """YOLOX-tiny overfit on 2 fridge images at 128 px (as tests/test_training.py's overfit test), so the
    evaluation has detections to score."""
    from fastai.callback.core import CancelValidException

    from fpn_lab.checkpoint import save_checkpoint
    from fpn_lab.data.dataloaders import Dataset, make_dataloaders
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import SingleSplitSplitter
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.learner.learner import make_learner
    from fpn_lab.mmdet_adapter.wrapper import recompute_batchnorm_stats
    from fpn_lab.models.build import build_model
    from fpn_lab.runner.context import set_seed
    from fastai.callback.core import Callback

    class NoValid(Callback):
        def before_validate(self):
            raise CancelValidException()

    parser = VOCBBoxParser(DATA / "fridge" / "annotations", DATA / "fridge" / "images")
    records = parser.parse(SingleSplitSplitter())[0]
    set_seed(0)
    ds = Dataset(records[:2], resize_and_pad(128))
    model = build_model("yolox_tiny_pafpn_300e", num_classes=len(parser.class_map))
    dls = make_dataloaders(ds, ds, 2)
    learn = make_learner(dls, model, parser.class_map, coco=False, wd=0.0, cbs=[NoValid()])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(60, 3e-3, pct_start=0.1)
    recompute_batchnorm_stats(model, [dls.train.one_batch() for _ in range(5)])  # as test_training does
    path = tmp_path_factory.mktemp("ddp") / "model.pth"
    save_checkpoint(path, model, parser.class_map, image_size=128)
    return path, parser, records[:5]


def test_sharded_evaluation_equals_one_process(tmp_path, overfit_checkpoint):
    from fpn_lab.checkpoint import load_checkpoint
    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.inference import evaluate

    path, parser, records = overfit_checkpoint
    single, single_dets = evaluate(load_checkpoint(path)[0], Dataset(records, resize_and_pad(128)),
                                        parser.class_map, batch_size=2)
    assert single["AP50"] > 0.2  # something to compare: the overfit images are found
    out = tmp_path / "eval.json"
    _torchrun([str(ROOT / "tests" / "ddp_check.py"), "evaluate", str(out), str(path)])
    r = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert r["result"][key] - single[key] == 0.0, key
    assert r["result"]["per_class_AP"] == single["per_class_AP"]
    assert len(r["detections"]) == len(single_dets)
    assert [(d["image_id"], d["category_id"]) for d in r["detections"]] == \
        [(d["image_id"], d["category_id"]) for d in single_dets]
    # every process got rank 0's result; only rank 0 holds pycocotools' evaluation
    assert [p["AP"] for p in r["per_rank"]] == [single["AP"]] * 2
    assert [p["has_ev"] for p in r["per_rank"]] == [True, False]


def _cli(*args, timeout=600):
    env = {**os.environ}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "fpn_lab.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _needs_two_cores():
    from fpn_lab.threads import usable_cores

    if usable_cores() < 2:
        pytest.skip(f"fpn-lab run --nproc 2 needs 2 usable cores; this machine has {usable_cores()}")


def test_fpn_lab_run_nproc_2(tmp_path):
    _needs_two_cores()
    run_dir = tmp_path / "run"
    proc = _cli("run", "params/smoke.yaml", "--nproc", "2", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((run_dir / "ranks" / f"rank{k}.json").read_text()) for k in range(2)]
    assert [r["status"] for r in reports] == ["ok", "ok"]
    files = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    assert [f for f in files if f.endswith(".pth") and "last_good" not in f] == ["model.pth"]
    assert [f for f in files if f.endswith("metrics.json")] == ["metrics.json"]
    assert [f for f in files if f.endswith(".ipynb")] == ["getting_started.ipynb"]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok"
    assert m["processes"] == {"world_size": 2, "backend": "gloo", "batch_size_per_process": 2,
                              "effective_batch_size": 4, "lr_scaling": "linear"}
    assert m["lr"] == pytest.approx(2 * 0.001)  # smoke.yaml's lr, scaled linearly for 2 processes
    import torch

    keys = torch.load(run_dir / "model.pth")["state_dict"].keys()
    assert not any(k.startswith("module.") for k in keys)
    assert (proc.stdout + proc.stderr).count("[fpn-lab] epoch 1/1") == 1  # one line per epoch, from rank 0


def test_fpn_lab_run_nproc_failure_names_the_rank(tmp_path):
    _needs_two_cores()
    run_dir = tmp_path / "run"
    # 5 training images, 2 processes of batch 3: no process gets a full batch (one process could: 5 >= 3)
    proc = _cli("run", "params/smoke.yaml", "--nproc", "2", "--run-dir", str(run_dir), "--set", "lr_find_iters=0",
                "--set", "batch_size=3")
    assert proc.returncode == 1
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "failed"
    assert m["error"]["ename"] == "ParamsError" and m["error"]["rank"] in (0, 1)
    assert "fewer than batch_size 3 per process" in m["error"]["evalue"]
    assert f"process {m['error']['rank']}: ParamsError" in proc.stdout
    assert (run_dir / "getting_started.ipynb").exists() and (run_dir / "getting_started.html").exists()


def test_fpn_lab_run_refuses_more_processes_than_cores(tmp_path):
    from fpn_lab.threads import usable_cores

    run_dir = tmp_path / "run"
    proc = _cli("run", "params/smoke.yaml", "--nproc", str(usable_cores() + 1), "--run-dir", str(run_dir),
                "--set", "device=cpu")
    assert proc.returncode == 2
    assert f"this machine has {usable_cores()} usable CPU core(s)" in proc.stderr
    assert not run_dir.exists()  # refused before anything was made
