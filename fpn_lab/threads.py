"""How many CPU threads a run computes with: the cores this process may use and nobody else keeps
busy, not the machine's count.

``os.cpu_count()`` counts the machine's cores; a container limited by a CPU quota, or a process
pinned with ``taskset``, may use fewer, and torch's OpenMP pool sized to the machine then has
more threads than cores, which turns each of the many short parallel regions of a detector's step
into a wait for a descheduled thread (``bench/RESULTS.md``, "Threads on a shared machine").
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from fpn_lab.errors import ParamsError

_CGROUP = Path("/sys/fs/cgroup")
BUSY_SHARE = 0.7  # a CPU other processes keep busier than this while we sleep counts as taken


def _cgroup_paths() -> dict[str, str]:
    """``{controller: path}`` of this process's cgroups (``""`` for the unified v2 hierarchy)."""
    paths = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    except (OSError, ValueError):
        pass
    return paths


def cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``), or ``None`` when
    unlimited or unknown. Reads cgroup v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``, in the process's own cgroup and every parent up to the root (the
    smallest quota binds)."""
    paths = _cgroup_paths()
    candidates = []
    if "" in paths:
        candidates += [(_CGROUP / paths[""].lstrip("/"), "v2")]
    for c in ("cpu", "cpu,cpuacct"):
        if c in paths:
            candidates += [(_CGROUP / c / paths[c].lstrip("/"), "v1")]
    candidates += [(_CGROUP, "v2"), (_CGROUP / "cpu", "v1")]
    limits = []
    for leaf, kind in candidates:
        for d in (leaf, *leaf.parents):
            if not str(d).startswith(str(_CGROUP)):
                break
            try:
                if kind == "v2":
                    quota, period = (d / "cpu.max").read_text().split()[:2]
                    if quota != "max":
                        limits.append(int(quota) / int(period))
                else:
                    quota = int((d / "cpu.cfs_quota_us").read_text())
                    if quota > 0:
                        limits.append(quota / int((d / "cpu.cfs_period_us").read_text()))
            except (OSError, ValueError):
                continue
    return min(limits) if limits else None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``os.sched_getaffinity``), capped by its
    cgroup's CPU quota rounded up (a quota of 1.5 cores lets two threads run half the time)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def cpu_times() -> dict[int, tuple[float, float]]:
    """``{cpu: (busy ticks, all ticks)}`` per CPU from ``/proc/stat`` (busy = all but idle and
    iowait); ``{}`` where it cannot be read (not Linux)."""
    out = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            v = [float(x) for x in fields[:8]]
            out[int(name[3:])] = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0.0), sum(v))
    return out


def busy_cores(window: float = 0.5, samples: int = 4, threshold: float = BUSY_SHARE) -> int | None:
    """How many of this process's CPUs (its affinity) other processes keep busy: the CPUs more
    than ``threshold`` busy in every one of ``samples`` consecutive ``window``-second intervals
    while this process sleeps (``/proc/stat`` per-CPU counters; 2 s by default), so a command
    that runs for a second or two does not count, a training in another notebook does.
    ``None`` where the counters cannot be read."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    ticks = [cpu_times()]
    for _ in range(samples):
        time.sleep(window)
        ticks.append(cpu_times())
    if not all(ticks):
        return None

    def busy_in(before, after, c):
        d_busy, d_all = after[c][0] - before[c][0], after[c][1] - before[c][1]
        return d_all > 0 and d_busy / d_all > threshold

    return sum(all(c in a and c in b and busy_in(a, b, c) for a, b in zip(ticks, ticks[1:])) for c in cpus)


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`configure_threads` set: ``count`` torch threads, and why (``reason``)."""

    count: int
    reason: str


def check_num_threads(num_threads) -> None:
    """Raise :class:`ParamsError` unless ``num_threads`` is 0 (automatic) or a positive int."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ParamsError(f"num_threads must be 0 (automatic: the cores this process may use, less busy ones; "
                          f"{usable_cores()} usable here) or a positive integer; got {num_threads!r}.")


def resolve_num_threads(num_threads: int = 0) -> ThreadChoice:
    """The thread count a run should use.

    ``0`` (automatic): ``OMP_NUM_THREADS`` when it is set to a positive int (the usual way to
    limit a process, which ``fpn-lab batch --jobs`` uses); else the cores this process may use
    (:func:`usable_cores`) less those other processes keep busy right now (:func:`busy_cores`,
    two seconds of sampling), at least 1. An OpenMP pool with a thread on a core another process
    holds waits for that thread at every parallel region: a YOLOX-tiny training step on 2 cores
    with one busy took 3.1 s at 2 threads and 1.65 s at 1 (0.85 s at 2 threads on an idle
    machine; ``bench/step_speed.py``, ``bench/RESULTS.md`` section 8). The count is chosen once,
    at the start: load that starts later is not followed (the same seed gives the same numbers
    only at the same thread count, which ``metrics.json`` records).
    A positive int is used as given.

    Raises:
        ParamsError: anything else (negative, a float, a string, a bool).
    """
    check_num_threads(num_threads)
    if num_threads:
        return ThreadChoice(num_threads, "num_threads as given")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS")
    usable = usable_cores()
    busy = busy_cores() if usable > 1 else None
    if busy:
        n = max(1, usable - busy)
        return ThreadChoice(n, f"{usable} usable cores, {busy} kept busy by other processes")
    return ThreadChoice(usable, f"{usable} usable cores (CPU affinity and cgroup quota)")


def configure_threads(num_threads: int = 0) -> ThreadChoice:
    """Set torch's intra-op thread count for this process (:func:`resolve_num_threads`) and
    return the :class:`ThreadChoice`.

    Args:
        num_threads: ``0`` (automatic) or a positive int. More threads than usable cores is
            allowed with a warning: every parallel region would wait for a thread the scheduler
            has parked.

    Raises:
        ParamsError: ``num_threads`` is negative or not an int.
    """
    import torch

    choice = resolve_num_threads(num_threads)
    usable = usable_cores()
    if choice.count > usable:
        warnings.warn(f"num_threads {choice.count} is more than the {usable} cores this process may use (CPU "
                      "affinity and cgroup quota): threads will wait for each other; use num_threads=0 (automatic).",
                      stacklevel=2)
    torch.set_num_threads(choice.count)
    return choice
