"""One line per training epoch for headless runs, written outside the notebook.

A papermill run shows nothing while it trains: fastai's progress table is HTML in the notebook,
which papermill neither logs nor echoes. :class:`EpochLine` writes, after each epoch::

    [fpn-lab] epoch 2/7: train_loss 1.2345, valid_loss 1.4321, AP 0.1234, AP50 0.3456, 41.2 s

to the kernel process's terminal and appends it (with a timestamp) to a log file, the run's
``run.log``. The notebook keeps fastai's table and nothing else: ipykernel (6 and later) redirects
file descriptors 1 and 2 into the notebook, so ``print`` and even ``sys.__stderr__`` would add a
stream output to the training cell; ``sys.stderr.fileno()`` is ipykernel's copy of the descriptor
the kernel started with, which papermill's kernel inherits from ``fpn-lab run`` (the console, or a
batch run's ``.batch.log``). In a plain Python process it is descriptor 2.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

from fastai.callback.core import Callback


def terminal_fd() -> int | None:
    """The file descriptor of the process's terminal that a Jupyter kernel does not capture, or ``None``.

    ipykernel's ``sys.stderr.fileno()`` returns its copy of the original descriptor 2; a kernel that
    does not capture descriptors (``capture_fd_output = False``, Windows) raises there, and then
    ``sys.__stderr__`` is the terminal.
    """
    for stream in (sys.stderr, sys.__stderr__):
        try:
            return stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            continue
    return None


def _fmt(value) -> str:
    if isinstance(value, float) or hasattr(value, "item"):
        value = float(value)
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def epoch_loss_terms(learn, epoch: int) -> dict[str, float]:
    """``{name: mean}`` of mmdet's loss terms over the training batches of ``epoch`` (0-based, in
    the current fit), as :class:`~fpn_lab.learner.callbacks.MMDetCallback` keeps them; ``{}`` when
    the learner kept none for that epoch."""
    terms = getattr(learn, "loss_terms", None) or []
    return dict(terms[epoch]) if 0 <= epoch < len(terms) else {}


class EpochLine(Callback):
    """After each training epoch, write ``epoch i/n``, the recorder's values (train and valid loss,
    the metric columns such as AP and AP50), the epoch's mean of each of mmdet's loss terms
    (``loss_cls``, ``loss_bbox``...: :func:`epoch_loss_terms`) and the epoch's seconds, outside the notebook.

    Args:
        file: a log file to append the line to, prefixed with a timestamp and ``INFO
            fpn_lab.progress:`` as the runner's ``run.log`` lines are; ``None``: no file.
        console: ``True``: the process's terminal (:func:`terminal_fd`, bypassing the notebook);
            ``False``: none; or a text stream to write to.

    Epochs of ``lr_find`` are not reported. When a learner fits more than once (``fine_tune``:
    frozen, then unfrozen), lines from the second fit on start with ``fit k,``.
    """

    order = 70  # after Recorder (50), whose values for the epoch it reads, and the progress table (60)

    def __init__(self, file: str | Path | None = None, console: bool | TextIO = True):
        self.file = Path(file) if file else None
        self.console = console
        self.fits = 0

    def before_fit(self):
        if not self._lr_find():
            self.fits += 1

    def before_epoch(self):
        self.t0 = time.perf_counter()

    def after_epoch(self):
        if self._lr_find():
            return
        line = self.line(time.perf_counter() - self.t0)
        self._to_console(f"[fpn-lab] {line}\n")
        if self.file is not None:
            stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
            with open(self.file, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} INFO fpn_lab.progress: {line}\n")

    def line(self, seconds: float) -> str:
        """``epoch i/n: name value, ..., s seconds`` from the recorder's values of the last epoch."""
        rec = self.learn.recorder
        names = [n for n in rec.metric_names[1:] if n != "time"]
        pairs = [*zip(names, rec.values[-1]), *epoch_loss_terms(self.learn, len(rec.values) - 1).items()]
        values = ", ".join(f"{n} {_fmt(v)}" for n, v in pairs)
        fit = f"fit {self.fits}, " if self.fits > 1 else ""
        return f"{fit}epoch {self.epoch + 1}/{self.n_epoch}: {values}, {seconds:.1f} s"

    def _lr_find(self) -> bool:
        return hasattr(self.learn, "lr_finder")

    def _to_console(self, text: str) -> None:
        if self.console is True:
            fd = terminal_fd()
            if fd is not None:
                try:
                    os.write(fd, text.encode("utf-8", "replace"))
                except OSError:
                    pass  # a closed terminal never stops training
        elif self.console:
            self.console.write(text)
            self.console.flush()


class PhaseTimer(Callback):
    """Times a run's fits into its :class:`~fpn_lab.runner.context.Run`: ``setup`` (from the run's
    start to the first fit), ``lr_find`` (fits under fastai's ``LRFinder``) and ``training`` (every
    other fit; ``fine_tune``'s two add up), with the kernel's peak memory after each."""

    order = -20  # first in, so the fit's own callbacks are inside the time

    def __init__(self, run):
        self.timed_run = run  # not `self.run`: fastai's Callback uses that name (whether it runs)

    def before_fit(self):
        from fastai.callback.schedule import LRFinder

        self.timed_run.follow_model(self.learn.model, self.learn)  # the picker may have built another preset
        if "setup" not in self.timed_run.timing:
            self.timed_run.timing["setup"] = time.perf_counter() - self.timed_run.started
            self.timed_run._record_peak_rss("setup")
        self.phase = "lr_find" if any(isinstance(cb, LRFinder) for cb in self.learn.cbs) else "training"
        self.t0 = time.perf_counter()

    def after_fit(self):
        self.timed_run.timing[self.phase] = self.timed_run.timing.get(self.phase, 0.0) + time.perf_counter() - self.t0
        self.timed_run._record_peak_rss(self.phase)



class EpochMetrics(Callback):
    """After each training epoch (not ``lr_find``), hand the recorder's values (``train_loss``,
    ``valid_loss`` and the metrics, by name; NaN and inf kept: a diverged epoch shows as such) and
    the epoch's mean loss terms (:func:`epoch_loss_terms`) to
    ``log(values, step)``: a tracker's logging function (:mod:`fpn_lab.runner.tracking`).
    ``step`` counts epochs over every fit of the learner (``fine_tune``'s frozen epoch, then its
    unfrozen ones: 1, 2, 3...), so two fits never log at the same step; :attr:`step` is the last."""

    order = 70  # after Recorder (50), whose values for the epoch it reads

    def __init__(self, log):
        self.log, self.step = log, 0

    def after_epoch(self):
        if hasattr(self.learn, "lr_finder"):
            return
        rec = self.learn.recorder
        values = {n: float(v) for n, v in zip(rec.metric_names[1:-1], rec.log[1:-1]) if isinstance(v, (int, float))}
        values.update(epoch_loss_terms(self.learn, len(rec.values) - 1))
        self.step += 1
        self.log(values, step=self.step)
