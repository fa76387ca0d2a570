"""The run context used inside a notebook: paths, seeds, phase timing and ``metrics.json``.

``metrics.json`` schema (``schema_version`` 1), written atomically:

* ``status``: ``"ok"`` (written by the notebook's last cell), ``"failed"`` (written by the
  runner, with ``error``: failing cell index, exception name and message) or ``"pruned"`` (a trial
  of ``fpn-lab tune`` stopped by Optuna's pruner; ``error`` says at which epoch).
* ``preset``, ``params`` (every notebook parameter after validation), ``seed``.
* ``dataset``: ``data_dir``, ``format`` (``voc`` / ``coco``), ``class_names`` and their
  ``category_ids`` (the ids ``predictions.json`` uses), ``split`` (``name``, ``train`` and
  ``valid`` sizes), ``sources`` (the annotation files), ``parse`` (the parser's
  :class:`~fpn_lab.data.parsers.ParseReport`: kept, clipped, dropped boxes by reason) and, with
  two COCO files, ``parse_by_source`` (:meth:`~fpn_lab.data.datasets.DatasetSplit.as_dict`).
* ``model``: ``params`` (parameter count), ``neck`` (its class name), ``neck_params`` (the neck's
  parameter count), ``levels``.
* ``metrics``: the 12 COCO box stats (``AP`` = AP@[.5:.95], ``AP50``, ``AP75``, ``AP_small`` ...,
  ``AR100`` ...) as fractions, ``per_class_AP``, ``message``; evaluated with pycocotools on
  the validation split in original-image pixels.
* ``analysis`` (after :meth:`Run.analyse`): AP / AR and box count per size range, the suggested
  score threshold (best mean F1) with each class' P / R / F1 there, the confusion matrix (counts
  and row-normalised, IoU 0.5, its score threshold), the curves, the worst images
  (:meth:`fpn_lab.metrics.analysis.Analysis.as_dict`).
* ``history``: per epoch ``train_loss``, ``valid_loss``, ``AP``, ``AP50``.
* ``timing_s``: seconds per phase (``setup``, ``lr_find``, ``training``, ``evaluation``, and
  ``rendering`` added by the runner).
* ``peak_rss_mb``: the notebook kernel's peak resident memory in MiB (``getrusage`` ``ru_maxrss``,
  a high-water mark) at the end of each phase and at ``total_notebook``; absent where the
  platform has no ``resource`` module (Windows).
* ``peak_gpu_mb``: on CUDA, the largest GPU memory torch allocated in this process, in MiB
  (``torch.cuda.max_memory_allocated``).
* ``processes``: ``world_size`` (1, or the processes under torchrun), ``backend`` (``gloo``,
  ``nccl`` or null), ``batch_size_per_process``, ``effective_batch_size`` (images per optimiser
  step) and ``lr_scaling`` (:mod:`fpn_lab.distributed`).
* ``versions`` (python, torch, mmcv, mmdet, mmengine, fastai), ``git_commit``, ``finished_at``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fpn_lab import distributed
from fpn_lab.runner.paths import (
    default_run_name, display_path, project_path, project_root, unique_run_dir, write_json_atomic,
)

SCHEMA_VERSION = 1


def _repoint(obj, old: Path, new: Path) -> None:
    """Point ``obj``'s path attributes (``str`` or ``Path``) under folder ``old`` to the same place under ``new``."""
    for key, value in list(vars(obj).items()):
        if isinstance(value, (str, Path)) and value and (Path(value) == old or old in Path(value).parents):
            setattr(obj, key, type(value)(new / Path(value).relative_to(old)))


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA).

    albumentations 2 has generators of its own: :func:`~fpn_lab.data.transforms.aug_tfms` seeds
    them from Python's ``random`` (so call this first) and the training loader re-seeds them every
    epoch and in every worker (:class:`~fpn_lab.data.dataloaders.DetectionDataLoader`). Results
    repeat exactly on one thread; multi-threaded CPU kernels may still differ in the last digits.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def library_versions() -> dict:
    """Installed versions of the libraries that decide results (from package metadata), and
    ``mmcv_ops``: which kernels ran mmcv's operators (``"torchvision"``: fpn_lab's, under the
    ``mmcv-lite`` distribution; ``"compiled"``: mmcv's own extension;
    :func:`fpn_lab.mmdet_adapter.mmcv_ext.ops_path`)."""
    from importlib.metadata import PackageNotFoundError, version

    from fpn_lab.mmdet_adapter.mmcv_ext import ops_path

    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "mmcv", "mmcv-lite", "mmdet", "mmengine", "fastai", "albumentations",
                 "pycocotools"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    out["mmcv_ops"] = ops_path()
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


#: Notebook parameters that steer the run itself and are not recorded in ``metrics.json``.
RUN_ONLY_PARAMS = ("run_dir", "interactive")


class Run:
    """One notebook run: its folder, parameters, phase timings and ``metrics.json``.

    A notebook starts it with :meth:`start` (parameters checked, generators seeded, threads set),
    gives the learner :meth:`callbacks` (one line per epoch in ``run.log``; ``lr_find`` and
    training timed), evaluates through :meth:`evaluate` (``predictions.json``,
    ``ground_truth.json``) and ends with :meth:`finish`. Nothing of this shows in its cells but
    those four calls.

    Args:
        params: the notebook's parameters (recorded in ``metrics.json``).
        run_dir: the folder made by the headless runner; ``None`` (interactive) makes a new
            ``runs/<timestamp>-<preset>`` folder.
    """

    def __init__(self, params: dict, run_dir: str | Path | None = None, preset_name: str = "run"):
        self.params = dict(params)
        self.dir = project_path(run_dir) if run_dir else unique_run_dir("runs", default_run_name(preset_name))
        self._auto_named = run_dir is None  # runs/<timestamp>-<preset>: renamed if another preset is trained
        self._callbacks: list = []
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timing: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.started = time.perf_counter()
        self.preset = None
        self.threads = None
        self.result: dict | None = None
        self.evaluated_images = 0
        self._evaluation = None  # (records, detections, class_map, COCOeval) for analyse()
        self.analysis = None
        self.selection_changed = None  # set by evaluate() when the model is another preset than the parameter's
        self.tracker = None  # fpn_lab.runner.tracking: set by start() from the track parameter
        self.dist = distributed.DistContext()  # set by start(): rank and world size under torchrun
        self._device = str(params.get("device", "cpu"))  # resolved by start()

    @classmethod
    def start(cls, namespace: dict, notebook: str | Path = "notebooks/getting_started.ipynb") -> Run:
        """Start a run of ``notebook`` from its parameters as they stand in ``namespace`` (the
        notebook's ``globals()``, after papermill's injected cell or the user's edits).

        Checks every parameter as the headless runner does (:func:`~fpn_lab.runner.params.validate_params`,
        so an interactive run fails here too, before any work), resolves ``selection``
        (:func:`~fpn_lab.models.registry.get_preset`), seeds Python, numpy and torch
        (:func:`set_seed`), sets torch's threads (:func:`~fpn_lab.threads.configure_threads`) and
        makes the run folder (``run_dir``, ``runs/<run_name>``, or ``runs/<timestamp>-<preset>``).
        Prints one line saying what it chose.

        Raises:
            ParamsError: a parameter is missing from ``namespace`` or invalid.
        """
        from fpn_lab.errors import ParamsError
        from fpn_lab.models.registry import get_preset
        from fpn_lab.runner.params import notebook_parameters, validate_params
        from fpn_lab.threads import configure_threads

        path = project_path(notebook)
        spec = notebook_parameters(path)
        missing = [k for k in spec if k not in namespace]
        if missing:
            raise ParamsError(f"Run.start: parameters {missing} of {path.name} are not defined; run the parameters "
                              "cell first.")
        params = {k: namespace[k] for k in spec if k not in RUN_ONLY_PARAMS}
        params, _ = validate_params(params, path, spec, syntax="python")
        preset = get_preset(params["selection"])
        from fpn_lab.device import check_amp, resolve_device

        device = resolve_device(params.get("device", "cpu"))  # "auto": the GPU when torch sees one
        check_amp(params.get("amp", False), device)
        dist = distributed.init(device)  # joins torchrun's process group, if any
        run_dir, run_name = namespace.get("run_dir"), params.get("run_name")
        run_dir = run_dir or (f"runs/{run_name}" if run_name else None)
        if dist.distributed:  # one folder for all processes: rank 0's
            run = cls(params, run_dir=run_dir, preset_name=preset.name) if dist.is_main else None
            run_dir = distributed.broadcast(str(run.dir) if run else None)
            run = run or cls(params, run_dir=run_dir, preset_name=preset.name)
        else:
            run = cls(params, run_dir=run_dir, preset_name=preset.name)
        run.preset, run.dist, run._device = preset, dist, device
        set_seed(params["seed"])
        run.threads = configure_threads(params.get("num_threads", 0))
        if params.get("track", "none") != "none" and dist.is_main:
            from fpn_lab.runner.tracking import make_tracker

            run.tracker = make_tracker(params["track"], run)
        where = (f"; process {dist.rank} of {dist.world_size} ({dist.backend}, {dist.device})"
                 if dist.distributed else "")
        print(f"preset: {preset.name} ({preset.description}); seed {params['seed']}; {run.threads.count} torch threads "
              f"({run.threads.reason}){where}; run folder: {display_path(run.dir)}")
        return run

    @property
    def device(self) -> str:
        """The device this process computes on: the ``device`` parameter resolved
        (:func:`fpn_lab.device.resolve_device`: ``auto`` is ``cuda`` where torch sees a GPU), or
        ``cuda:<local rank>`` for ``cuda`` under torchrun (:func:`fpn_lab.distributed.init`)."""
        return self.dist.device if self.dist.distributed else self._device

    def scaled_lr(self, lr: float) -> float:
        """``lr`` (chosen for one process of ``batch_size`` images) for this run's processes, by the
        ``lr_scaling`` parameter (:func:`fpn_lab.distributed.scaled_lr`): ``linear`` multiplies it by
        the number of processes. Prints what it did when it changed anything."""
        scaled = distributed.scaled_lr(lr, self.params.get("lr_scaling", "linear"), self.dist.world_size)
        if scaled != lr:
            print(f"lr {lr:.2e} for one process x {self.dist.world_size} processes (lr_scaling linear) = {scaled:.2e}")
        return scaled

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time a block; repeated phases add up."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - t
            self._record_peak_rss(name)

    def _record_peak_rss(self, name: str) -> None:
        try:
            import resource
        except ImportError:  # Windows
            return
        unit = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        self.peak_rss_mb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit, 1)

    def path(self, name: str) -> Path:
        return self.dir / name

    def progress_callback(self):
        """A fastai callback printing one line per epoch (losses, AP, AP50, seconds) to the console
        and appending it to ``run.log``, outside the notebook
        (:class:`~fpn_lab.learner.progress.EpochLine`): ``make_learner(..., cbs=[run.progress_callback()])``."""
        from fpn_lab.learner.progress import EpochLine

        return EpochLine(file=self.path("run.log") if self.dist.is_main else None, console=self.dist.is_main)

    def callbacks(self) -> list:
        """The learner's run callbacks: :meth:`progress_callback` and a timer of each fit
        (:class:`~fpn_lab.learner.progress.PhaseTimer`: ``setup`` until the first fit, then
        ``lr_find`` and ``training``), and the tracker's, with ``track`` set
        (:mod:`fpn_lab.runner.tracking`), and in a trial of ``fpn-lab tune`` the pruning callback that
        reports to its study (:func:`fpn_lab.runner.trial.pruning_callbacks`)."""
        from fpn_lab.learner.progress import PhaseTimer
        from fpn_lab.runner.trial import pruning_callbacks

        self._callbacks = [self.progress_callback(), PhaseTimer(self)] + ([self.tracker.callback()] if self.tracker else [])
        self._callbacks += pruning_callbacks()
        return list(self._callbacks)

    def follow_model(self, model, learn=None) -> None:
        """Make the run's records follow ``model`` when it is another preset than the ``selection``
        parameter (the model picker built another one): ``metrics.json``'s ``preset`` becomes the
        model's, ``selection_changed`` records both, and a folder this run named itself
        (``runs/<timestamp>-<preset>``) is renamed after the model's preset; the paths into it that
        ``learn`` (its ``path``) and the callbacks hold (``run.log``, ``last_good.pth``, TensorBoard's
        folder) move with it. A folder given by ``run_dir`` or ``run_name`` keeps its name, as does one
        shared by torchrun's processes. Called at each fit's start
        (:class:`~fpn_lab.learner.progress.PhaseTimer`) and by :meth:`evaluate`; nothing happens when
        the presets agree."""
        trained = getattr(model, "preset", None)
        if self.preset is None or trained is None or trained.name == self.preset.name:
            return
        old = self.preset.name
        self.selection_changed = {"parameter": old, "trained": trained.name}
        self.preset = trained
        renamed = ""
        if self._auto_named and not self.dist.distributed and self.dir.name.endswith(old):
            new = unique_run_dir(self.dir.parent, self.dir.name[: -len(old)] + trained.name)
            new.rmdir()  # made to reserve the name; the run's folder moves there
            self.dir.rename(new)
            old_dir, self.dir = self.dir, new
            holders = [*self._callbacks, self.tracker, learn, *(getattr(learn, "cbs", None) or [])]
            for obj in {id(o): o for o in holders if o is not None}.values():
                _repoint(obj, old_dir, new)
            renamed = f"; run folder renamed to {display_path(new)}"
        print(f"note: the model is {trained.name}, not the parameter's selection {old}; metrics.json records the model "
              f"that was trained{renamed}")

    def evaluate(self, model, dataset, class_map) -> dict:
        """COCO evaluation of ``model`` on ``dataset`` (:func:`~fpn_lab.inference.evaluate`),
        timed as ``evaluation``; writes ``predictions.json`` (COCO results, the dataset's own ids)
        and ``ground_truth.json`` (what they were scored against) and keeps the result for
        :meth:`finish`. Returns the result dict (``AP``, ``AP50``, ... ``per_class_AP``).

        Raises:
            DataError: ``dataset`` holds no scored ground-truth box (none at all, or only crowd
                or difficult ones): there is nothing to compute AP on, and a run must not end
                'ok' with NaN metrics.
        """
        from fpn_lab.errors import DataError
        from fpn_lab.inference import evaluate
        from fpn_lab.metrics.coco import records_to_coco

        scored = sum(int((~(r.iscrowd | r.difficult)).sum()) for r in dataset.records)
        if not scored:
            raise DataError(f"run.evaluate: the validation split has no ground-truth box to score ({len(dataset)} images; "
                            "every box missing, crowd or difficult), so AP cannot be computed. Fix: validate on images "
                            "with annotated boxes (check the split and the annotations' difficult/iscrowd flags).")
        self.follow_model(model)  # before anything is written, so the files land in the renamed folder
        with self.phase("evaluation"):
            result, detections, ev = evaluate(model, dataset, class_map, cocoeval=True)  # sharded under torchrun
        if self.dist.is_main:
            write_json_atomic(self.path("predictions.json"), detections)
            write_json_atomic(self.path("ground_truth.json"), records_to_coco(dataset.records, class_map))
        self.result, self.evaluated_images = result, len(dataset)
        self._evaluation = (dataset.records, detections, class_map, ev)
        return result

    def analyse(self, detection_threshold: float | str = "auto"):
        """Analyse the evaluation :meth:`evaluate` did (no second pass over the data): AP by size,
        curves, the suggested threshold, the confusion matrix and per-image errors at
        ``detection_threshold`` (``"auto"``: the best mean F1's), as
        :func:`fpn_lab.metrics.analysis.analyse`. Writes ``confusion_matrix.png`` and
        ``curves.png`` to the run folder and keeps the summary for ``metrics.json``
        (``analysis``). Prints the size table's gist and the threshold.

        Raises:
            TrainingError: called before :meth:`evaluate`.
        """
        import matplotlib.pyplot as plt

        from fpn_lab.errors import TrainingError
        from fpn_lab.metrics.analysis import analyse
        from fpn_lab.viz.analysis import plot_confusion_matrix, plot_curves

        if self._evaluation is None:
            raise TrainingError("Run.analyse: nothing evaluated yet; call run.evaluate(model, valid_ds, class_map) first.")
        records, detections, class_map, ev = self._evaluation
        # under torchrun: rank 0 holds pycocotools' evaluation, analyses it and hands the others the result
        self.analysis = distributed.broadcast(analyse(records, detections, class_map, self.result, ev,
                                                      detection_threshold) if self.dist.is_main else None)
        for name, draw in (("confusion_matrix.png", plot_confusion_matrix), ("curves.png", plot_curves)) \
                if self.dist.is_main else ():
            fig = draw(self.analysis)
            tmp = self.path(name + ".tmp.png")
            fig.savefig(tmp, dpi=90, bbox_inches="tight")
            tmp.replace(self.path(name))
            plt.close(fig)
        a = self.analysis
        sizes = ", ".join(f"{k} {v['AP']:.3f} ({v['boxes']} boxes)" if v["AP"] is not None else f"{k}: no boxes"
                          for k, v in a.by_size.items())
        best = (f"best mean F1 {a.best_mean_f1:.3f} at score {a.best_threshold:.2f}" if not np.isnan(a.best_threshold)
                else "no detections to choose a threshold from" if np.isnan(a.best_mean_f1)
                else "no score threshold keeps a true positive (every F1 is 0): no threshold to suggest")
        print(f"AP by size: {sizes}\n{best}; confusion matrix and worst images at score >= {a.score_threshold:.2f}")
        return self.analysis

    def finish(self, **sections) -> Path:
        """Write ``metrics.json`` with ``status: ok`` and the given sections (see module docstring).

        A run begun with :meth:`start` adds ``preset``, ``seed`` and ``threads``; one evaluated with
        :meth:`evaluate` adds ``metrics`` and ``inference_ms_per_image``. Sections given as objects
        are recorded as data: ``dataset`` (a :class:`~fpn_lab.data.datasets.DatasetSplit`: its
        ``as_dict``), ``model`` (parameter count, neck type, levels) and ``learn`` (a fastai
        ``Learner``: its per-epoch ``history``).

        Raises:
            TrainingError: a run started with :meth:`start` finishes without :meth:`evaluate`
                (``metrics.json`` would say ``ok`` without metrics).
        """
        from fpn_lab.errors import TrainingError

        if self.preset is not None and self.result is None and "metrics" not in sections:
            raise TrainingError("Run.finish: no evaluation was recorded; call run.evaluate(model, valid_ds, class_map) "
                                "first, so metrics.json holds the metrics it reports.")
        sections = self._as_data(sections)
        if not self.dist.is_main:  # rank 0 writes metrics.json; the others only leave the group
            distributed.shutdown()
            return self.path("metrics.json")
        self.timing["total_notebook"] = time.perf_counter() - self.started
        self._record_peak_rss("total_notebook")
        data = {"schema_version": SCHEMA_VERSION, "status": "ok", "params": self.params, **sections,
                "timing_s": {k: round(v, 2) for k, v in self.timing.items()}, "versions": library_versions(),
                **({"peak_rss_mb": self.peak_rss_mb} if self.peak_rss_mb else {}),
                "git_commit": git_commit(), "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        path = write_json_atomic(self.path("metrics.json"), data)
        if self.tracker is not None:  # after metrics.json, which it logs as an artefact
            self.tracker.finish(json.loads(path.read_text()), self.dir)
        distributed.shutdown()
        return path

    def _as_data(self, sections: dict) -> dict:
        out = {}
        if self.preset is not None:
            out.update(preset=self.preset.name, seed=self.params.get("seed"),
                       threads={"count": self.threads.count, "reason": self.threads.reason})
            if self.selection_changed:
                out["selection_changed"] = self.selection_changed
            d = self.dist
            out["processes"] = {"world_size": d.world_size, "backend": d.backend,
                                "batch_size_per_process": self.params.get("batch_size"),
                                "effective_batch_size": (self.params.get("batch_size") or 0) * d.world_size,
                                "lr_scaling": self.params.get("lr_scaling", "linear")}
        if self._device.startswith("cuda"):
            import torch

            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        if self.result is not None:
            out.update(metrics=self.result, inference_ms_per_image=round(
                1000 * self.timing.get("evaluation", 0.0) / max(1, self.evaluated_images), 1))
        if self.analysis is not None:
            out["analysis"] = self.analysis.as_dict()
        for key, value in sections.items():
            if key == "dataset" and hasattr(value, "as_dict"):
                value = value.as_dict(display_path)
            elif key == "model" and hasattr(value, "num_classes") and hasattr(value, "levels"):
                value = {"params": sum(p.numel() for p in value.parameters()), "neck": type(value.neck).__name__,
                         "neck_params": sum(p.numel() for p in value.neck.parameters()), "levels": list(value.levels)}
            elif key == "learn" and hasattr(value, "recorder"):
                from fpn_lab.learner.learner import history

                key, value = "history", history(value)
            out[key] = value
        return out
