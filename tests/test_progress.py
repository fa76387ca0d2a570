"""EpochLine: one line per training epoch on the console and in the run's log, none for lr_find."""

from __future__ import annotations

import io
import re

import fastai.callback.progress  # noqa: F401  (fastai's progress table, as make_learner has it)
import fastai.callback.schedule  # noqa: F401  (Learner.lr_find)
import pytest
from fastai.test_utils import synth_learner

from fpn_lab.learner.progress import EpochLine
from fpn_lab.runner.context import Run

LINE = re.compile(r"epoch (\d+)/(\d+): train_loss (\S+), valid_loss (\S+), mae (\S+), (\d+\.\d) s$")


def _learner(*cbs):
    from fastai.metrics import mae

    return synth_learner(n_trn=4, metrics=[mae], cbs=list(cbs))


def test_one_line_per_epoch_in_the_console_and_the_log(tmp_path):
    log, console = tmp_path / "run.log", io.StringIO()
    learn = _learner(EpochLine(file=log, console=console))
    learn.fit(3, 1e-2)
    printed = console.getvalue().splitlines()
    logged = log.read_text().splitlines()
    assert len(printed) == len(logged) == 3
    for i, (out, rec, values) in enumerate(zip(printed, logged, learn.recorder.values)):
        assert out.startswith("[fpn-lab] epoch ")
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO fpn_lab.progress: epoch ", rec)
        m = LINE.search(out)
        assert m and rec.endswith(m.group(0))
        assert (int(m.group(1)), int(m.group(2))) == (i + 1, 3)
        assert [float(m.group(k)) for k in (3, 4, 5)] == pytest.approx([float(v) for v in values], abs=1e-4)


def test_lr_find_writes_nothing_and_a_second_fit_is_numbered(tmp_path):
    console = io.StringIO()
    learn = _learner(EpochLine(console=console))
    learn.lr_find(num_it=10, show_plot=False)
    assert console.getvalue() == ""
    learn.fit(1, 1e-2)
    learn.fit(1, 1e-2)
    assert [line.split(":")[0] for line in console.getvalue().splitlines()] == [
        "[fpn-lab] epoch 1/1", "[fpn-lab] fit 2, epoch 1/1"]


def test_default_console_is_the_process_stderr_descriptor(capfd):
    learn = _learner(EpochLine())
    learn.fit(1, 1e-2)
    err = capfd.readouterr().err
    assert re.search(r"^\[fpn-lab\] epoch 1/1: train_loss ", err, re.M), err


def test_run_progress_callback_appends_to_the_runs_log(tmp_path):
    run = Run({}, run_dir=tmp_path / "r")
    cb = run.progress_callback()
    assert isinstance(cb, EpochLine) and cb.file == run.path("run.log") and cb.console is True
