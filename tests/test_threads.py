"""Thread count: the cores this process may use (affinity, cgroup quota, OMP_NUM_THREADS), never the machine's count."""

from __future__ import annotations

import pytest
import torch

from fpn_lab import threads
from fpn_lab.errors import ParamsError


@pytest.fixture
def fake_cgroup(tmp_path, monkeypatch):
    """A cgroup tree under ``tmp_path``: the process sits in ``/job`` of the v2 hierarchy."""
    monkeypatch.setattr(threads, "_CGROUP", tmp_path)
    monkeypatch.setattr(threads, "_cgroup_paths", lambda: {"": "/job"})
    (tmp_path / "job").mkdir()
    return tmp_path


def test_cgroup_v2_quota_caps_the_cores(fake_cgroup, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    (fake_cgroup / "job" / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit() == 1.5
    assert threads.usable_cores() == 2  # 1.5 cores: two threads each run part of the time


def test_the_smallest_quota_up_the_tree_binds(fake_cgroup, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    (fake_cgroup / "job" / "cpu.max").write_text("max 100000\n")
    (fake_cgroup / "cpu.max").write_text("300000 100000\n")
    assert threads.usable_cores() == 3


def test_cgroup_v1_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_CGROUP", tmp_path)
    monkeypatch.setattr(threads, "_cgroup_paths", lambda: {"cpu,cpuacct": "/docker/abc"})
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(16)))
    d = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("400000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.usable_cores() == 4


def test_affinity_counts_when_there_is_no_quota(fake_cgroup, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)
    assert threads.cgroup_cpu_limit() is None
    assert threads.usable_cores() == 1


def test_zero_means_omp_num_threads_else_usable_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 6)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.resolve_num_threads(0).count == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what `fpn-lab batch --jobs 2` gives each run on two cores
    assert threads.resolve_num_threads(0) == threads.ThreadChoice(1, "OMP_NUM_THREADS")
    assert threads.resolve_num_threads(3).count == 3


def _stat_sequence(monkeypatch, samples):
    """Make cpu_times return the given per-CPU (busy, all) samples in turn, and sleeping free."""
    it = iter(samples)
    monkeypatch.setattr(threads, "cpu_times", lambda: next(it))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)


def _ticks(*shares):
    """Cumulative per-CPU (busy, all) counters: one sample per interval of 100 ticks with the given busy shares."""
    out, acc = [{c: (0, 0) for c in range(len(shares[0]))}], [0] * len(shares[0])
    for row in shares:
        acc = [a + 100 * x for a, x in zip(acc, row)]
        out.append({c: (acc[c], 100 * len(out)) for c in range(len(row))})
    return out


def test_cores_other_processes_keep_busy_are_left_to_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    # cpu0 ~95 % busy throughout (another notebook's kernel), cpu1 idle; cpu2 is outside our affinity
    _stat_sequence(monkeypatch, _ticks(*[(0.95, 0.03, 1.0)] * 4))
    choice = threads.resolve_num_threads(0)
    assert choice.count == 1 and "1 kept busy" in choice.reason
    # a command busy for part of the two seconds (or a short spike) does not take the core
    _stat_sequence(monkeypatch, _ticks((1.0, 0.0), (1.0, 0.0), (0.9, 0.0), (0.1, 0.0)))
    assert threads.resolve_num_threads(0).count == 2
    _stat_sequence(monkeypatch, _ticks(*[(0.99, 0.99)] * 4))  # never fewer than one
    assert threads.resolve_num_threads(0).count == 1


def test_busy_cores_reads_proc_stat_per_cpu():
    if not threads.cpu_times():
        pytest.skip("no /proc/stat on this platform")
    n = threads.busy_cores(window=0.02, samples=2)
    assert n is not None and 0 <= n <= len(threads.os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", [-1, 1.5, "auto", "2", True, None])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ParamsError, match="num_threads"):
        threads.resolve_num_threads(bad)


def test_configure_sets_torch_and_warns_beyond_the_usable_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    try:
        assert threads.configure_threads(1).count == 1 and torch.get_num_threads() == 1
        with pytest.warns(UserWarning, match="more than the 1 cores"):
            assert threads.configure_threads(2).count == 2
    finally:
        torch.set_num_threads(before)
