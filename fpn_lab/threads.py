"""How many CPU threads a run computes with: the cores this process may use, not the machine's count.

``os.cpu_count()`` counts the machine's cores; a container limited by a CPU quota, or a process
pinned with ``taskset``, may use fewer, and torch's OpenMP pool sized to the machine then has
more threads than cores, which turns each of the many short parallel regions of a detector's step
into a wait for a descheduled thread (``bench/RESULTS.md``, "Threads on a shared machine").
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

from fpn_lab.errors import ParamsError

_CGROUP = Path("/sys/fs/cgroup")


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


def resolve_num_threads(num_threads: int = 0) -> int:
    """``0`` -> ``OMP_NUM_THREADS`` when it is set to a positive int (the usual way to limit a
    process, which ``fpn-lab batch --jobs`` uses), else :func:`usable_cores`; a positive int -> itself.

    Raises:
        ParamsError: anything else (negative, a float, a string, a bool).
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ParamsError(f"num_threads must be 0 (the cores this process may use: {usable_cores()} here) or a "
                          f"positive integer; got {num_threads!r}.")
    if num_threads:
        return num_threads
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else usable_cores()


def configure_threads(num_threads: int = 0) -> int:
    """Set torch's intra-op thread count for this process and return it.

    Args:
        num_threads: ``0`` (automatic: :func:`resolve_num_threads`) or a positive int. More threads than usable cores is allowed with a warning: it makes every
            parallel region wait for a thread the scheduler has parked.

    Raises:
        ParamsError: ``num_threads`` is negative or not an int.
    """
    import torch

    n = resolve_num_threads(num_threads)
    usable = usable_cores()
    if n > usable:
        warnings.warn(f"num_threads {n} is more than the {usable} cores this process may use (CPU affinity and "
                      "cgroup quota): threads will wait for each other; use num_threads=0 (automatic).", stacklevel=2)
    torch.set_num_threads(n)
    return n
