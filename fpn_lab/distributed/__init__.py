"""Training and evaluation across processes launched by torchrun: the one module that knows about
process groups.

A notebook run under ``torchrun`` (``fpn-lab run PARAMS.yaml --nproc N``, or torchrun directly for
several machines: docs/distributed.md) executes the same cells in every process.
:meth:`~fpn_lab.runner.context.Run.start` calls :func:`init`, which joins the process group
torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): gloo on the CPU, NCCL on CUDA (each process on GPU ``LOCAL_RANK``). Then:

* :class:`DistributedTrainer`, which :func:`~fpn_lab.learner.learner.make_learner` adds to every
  learner in a process group, wraps the model in ``DistributedDataParallel`` for each fit (so
  every forward goes through the wrapper and gradients are averaged), gives each process its share
  of the training and validation data (:func:`shard_indices`), and averages the loss over
  processes after every batch, so fastai's recorder, ``lr_find`` and the non-finite-loss guard
  take the same decisions in every process.
* Evaluation is sharded: each process predicts its share, the detections are gathered by image
  (:func:`gather_by_key`, duplicates from padding dropped), the COCO metric is computed once on rank
  0 and broadcast (:func:`broadcast`), so it equals a one-process evaluation of the same weights.
* Only rank 0 writes files (:func:`is_main`); :func:`shutdown` ends the group (a barrier first:
  gloo aborts the process otherwise).

Batch size and learning rate: each process takes ``batch_size`` images per step, so one optimiser
step sees ``batch_size * world_size`` images; :func:`scaled_lr` applies the linear scaling rule
(Goyal et al., "Accurate, Large Minibatch SGD", 2017) or none.

Outside a process group (one process, Jupyter) every function here is a no-op or the identity.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from datetime import timedelta

from fpn_lab.errors import ParamsError

#: Environment variables torchrun sets for every process.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LR_SCALING = ("linear", "none")
#: Seconds a collective waits for the other processes before failing (torch's default is 30 min;
#: a rank that died is noticed at once, this bounds a rank that hangs).
TIMEOUT_S = int(os.environ.get("FPN_LAB_DIST_TIMEOUT", "600"))


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its machine),
    the ``backend`` (``"gloo"``, ``"nccl"``, or ``None`` alone) and the torch ``device`` it computes on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def check_params(params: dict) -> None:
    """A notebook run's ``lr_scaling`` (one of :data:`LR_SCALING`) and ``sync_bn`` (only with
    ``device: cuda``; ``"auto"`` is checked where it resolves); absent keys are not checked.

    Raises:
        ParamsError: an unknown ``lr_scaling``, or ``sync_bn`` on the CPU.
    """
    if "lr_scaling" in params and params["lr_scaling"] not in LR_SCALING:
        raise ParamsError(f"lr_scaling: {params['lr_scaling']!r} is not one of {list(LR_SCALING)} (linear: lr x the "
                          "number of processes under torchrun; none: lr as given).")
    if params.get("sync_bn") and params.get("device") == "cpu":
        raise ParamsError("sync_bn: true needs device: cuda (torch's SyncBatchNorm has no CPU implementation); on the "
                          "CPU each process keeps its own BatchNorm statistics. Set sync_bn: false.")


def torchrun_env() -> dict[str, str] | None:
    """torchrun's variables when this process was started by it with ``WORLD_SIZE`` > 1, else ``None``.

    Raises:
        ParamsError: ``WORLD_SIZE`` > 1 but some of :data:`TORCHRUN_ENV` are missing or not numbers.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    env = {k: os.environ.get(k) for k in TORCHRUN_ENV}
    missing = [k for k, v in env.items() if not v]
    if missing:
        raise ParamsError(f"WORLD_SIZE={env['WORLD_SIZE']} but {missing} are not set; start the processes with torchrun "
                          "(`fpn-lab run PARAMS.yaml --nproc N`, or docs/distributed.md), which sets "
                          f"{list(TORCHRUN_ENV)}.")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if not env[k].isdigit():
            raise ParamsError(f"{k}={env[k]!r} is not a non-negative integer; start the processes with torchrun.")
    return env


def _torch_dist():
    import torch.distributed as dist

    return dist


def initialized() -> bool:
    dist = _torch_dist()
    return dist.is_available() and dist.is_initialized()


def context() -> DistContext:
    """This process's :class:`DistContext` (rank 0 of 1 outside a process group)."""
    if not initialized():
        return DistContext()
    dist = _torch_dist()
    backend = dist.get_backend()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistContext(rank=dist.get_rank(), local_rank=local, world_size=dist.get_world_size(), backend=backend,
                       device=f"cuda:{local}" if backend == "nccl" else "cpu")


def init(device: str = "cpu") -> DistContext:
    """Join torchrun's process group, if this process is one of several; otherwise do nothing.

    Args:
        device: the run's ``device`` parameter: ``"cpu"`` (backend gloo) or ``"cuda"`` (NCCL;
            each process computes on ``cuda:LOCAL_RANK``). ``"cuda:N"`` is refused in a group:
            the local rank chooses the GPU.

    Returns:
        The :class:`DistContext` (rank 0 of 1 when not started by torchrun). Calling it again
        returns the group already joined.

    Raises:
        ParamsError: a device other than cpu / cuda in a group, CUDA requested but not available,
            or incomplete torchrun variables (:func:`torchrun_env`).
    """
    env = torchrun_env()
    if env is None or initialized():
        return context()
    import torch

    device = str(device)
    if device == "cpu":
        backend = "gloo"
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError("device 'cuda' under torchrun, but torch sees no GPU; use device: cpu.")
        backend = "nccl"
        torch.cuda.set_device(int(env["LOCAL_RANK"]))
    else:
        raise ParamsError(f"device {device!r} under torchrun: use 'cpu' (gloo) or 'cuda' (NCCL, each process on GPU "
                          "LOCAL_RANK); a fixed 'cuda:N' would put every process on the same GPU.")
    _torch_dist().init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_S))
    return context()


def is_main() -> bool:
    """True in rank 0 (and in a lone process): the process that writes files."""
    return context().is_main


def world_size() -> int:
    return context().world_size


def barrier() -> None:
    if initialized():
        _torch_dist().barrier()


def shutdown() -> None:
    """Leave the process group: a barrier (gloo aborts a process that leaves while others still
    talk to it), ``destroy_process_group``, then a garbage collection, so that the group's C++
    objects and the tensors its finished work holds are freed while the interpreter is whole
    rather than during its shutdown (PyTorch's c10d notes on ``destroy_process_group``). No-op
    outside a group."""
    if initialized():
        dist = _torch_dist()
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


@contextlib.contextmanager
def fastai_sees_one_process():
    """Hide torchrun's ``RANK`` and ``WORLD_SIZE`` from fastai for a block.

    fastai decides from those two variables that only rank 0 saves (``save_model``) and that
    ``Learner.load`` waits at a barrier; its ``lr_find`` saves the weights to a temporary folder
    whose name differs per process, so under torchrun rank 0 would wait at a barrier no other rank
    reaches, and the other ranks would keep lr_find's diverged weights and optimiser state. With
    the variables hidden every process saves and restores its own copy (rank 0 in the run folder,
    the others in temporary folders: :func:`~fpn_lab.learner.learner.make_learner`)."""
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def broadcast(obj, src: int = 0):
    """``obj`` as rank ``src`` holds it, in every process (pickled; identity outside a group)."""
    if not initialized():
        return obj
    box = [obj]
    _torch_dist().broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj) -> list:
    """Every process's ``obj``, in rank order, in every process (``[obj]`` outside a group)."""
    if not initialized():
        return [obj]
    out = [None] * world_size()
    _torch_dist().all_gather_object(out, obj)
    return out


def gather_by_key(items: dict) -> dict:
    """Merge every process's ``{key: value}`` (for example ``{image index: detections}``) into one
    dict in every process; a key several processes hold (an image padded into two shards) is kept
    once, from the lowest rank. Sorted by key."""
    merged: dict = {}
    for part in all_gather(items):
        for k, v in part.items():
            merged.setdefault(k, v)
    return dict(sorted(merged.items()))


def mean_over_processes(value):
    """The mean of a scalar tensor over the processes (the tensor itself outside a group)."""
    if not initialized():
        return value
    t = value.detach().float().clone()
    _torch_dist().all_reduce(t)
    return (t / world_size()).to(value.dtype)


def sum_over_processes(value, count: float):
    """``(value summed over the processes, count summed over the processes)``: ``value`` a scalar
    tensor, ``count`` a number (both returned as they are outside a group)."""
    if not initialized():
        return value, float(count)
    import torch

    t = torch.stack([value.detach().float().reshape(()), torch.tensor(float(count))])
    _torch_dist().all_reduce(t)
    return t[0], float(t[1])


def shard_indices(n: int, rank: int, world: int, *, order=None, empty_ok: bool = False) -> list[int]:
    """This rank's share of ``n`` items: every ``world``-th index of ``order`` (default ``0..n-1``)
    from position ``rank`` on.

    The shares of ranks ``0..world-1`` partition the items exactly: none lost, none repeated; the
    sizes differ by at most one. ``empty_ok=True`` (prediction, validation) lets a rank have no
    items.

    Raises:
        ParamsError: ``rank`` outside ``0..world-1``, ``world`` < 1, or fewer items than processes
            (unless ``empty_ok``).
    """
    if world < 1 or not 0 <= rank < world:
        raise ParamsError(f"shard_indices: rank {rank} of world size {world}; need 0 <= rank < world_size.")
    order = list(range(n)) if order is None else list(order)
    n = len(order)
    if n < world and not empty_ok:
        raise ParamsError(f"{n} images cannot be shared by {world} processes (each needs at least one); "
                          "use fewer processes or more images.")
    return order[rank::world]


def common_steps(n: int, world: int, batch_size: int) -> int:
    """Optimiser steps per epoch with ``n`` training images shared by ``world`` processes of
    ``batch_size`` images each: every process makes as many steps as the smallest share has full
    batches (DDP needs the same number everywhere), ``floor(floor(n / world) / batch_size)``."""
    return (n // world) // batch_size


def scaled_lr(lr: float, rule: str, world: int | None = None) -> float:
    """The learning rate for ``world`` processes (default: this group's size) from ``lr`` chosen
    for one process of ``batch_size`` images.

    ``"linear"``: ``lr * world``, since a step averages ``world`` times as many images (Goyal et
    al. 2017, section 2.1); ``"none"``: ``lr``. In one process both give ``lr``.

    Raises:
        ParamsError: a rule other than :data:`LR_SCALING`.
    """
    if rule not in LR_SCALING:
        raise ParamsError(f"lr_scaling must be one of {LR_SCALING}; got {rule!r}.")
    world = world_size() if world is None else world
    return lr * world if rule == "linear" else lr


def __getattr__(name: str):
    if name == "DistributedTrainer":  # a fastai callback: fastai is imported only when it is asked for
        from fpn_lab.distributed.trainer import DistributedTrainer

        return DistributedTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DistContext", "DistributedTrainer", "LR_SCALING", "all_gather", "barrier", "broadcast", "common_steps",
           "context", "fastai_sees_one_process", "gather_by_key", "init", "initialized", "is_main", "mean_over_processes", "scaled_lr",
           "shard_indices", "shutdown", "torchrun_env", "world_size"]
