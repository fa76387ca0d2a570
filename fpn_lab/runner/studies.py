"""Studies made of batches: the neck study trains one run per neck and seed with
:func:`fpn_lab.runner.batch.run_batch` (the comparison of the finished runs is
:mod:`fpn_lab.runner.compare`'s). Used by ``notebooks/compare_necks.ipynb`` and ``bench/neck_study.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fpn_lab.errors import ParamsError, TrainingError
from fpn_lab.runner.batch import run_batch
from fpn_lab.runner.paths import project_path


def train_necks(params_dir: str | Path, seeds: Sequence[int], runs_dir: str | Path) -> list[Path]:
    """Train every params file of ``params_dir`` (one per neck) once per seed, each seed as one
    ``fpn-lab batch`` (:func:`fpn_lab.runner.batch.run_batch`, one run at a time) into
    ``runs_dir/seed<K>/<params-file-stem>/``. Returns the batch folders.

    Raises:
        ParamsError: ``params_dir`` holds no ``*.yaml`` file, or ``seeds`` is empty.
        TrainingError: a run failed (its batch page, ``seed<K>/index.html``, says which and where).
    """
    files = sorted(project_path(params_dir).glob("*.yaml"))
    if not files:
        raise ParamsError(f"necks_params: no params files (*.yaml) in {str(params_dir)!r}; give a folder with one file "
                          "per neck, such as params/necks.")
    if not seeds:
        raise ParamsError("seeds: empty; give at least one seed, e.g. [0, 1, 2].")
    dirs = []
    for seed in seeds:
        batch_dir, code = run_batch(files, jobs=1, name=f"seed{seed}", overrides=[f"seed={seed}"], runs_dir=runs_dir)
        if code:
            raise TrainingError(f"seed {seed}: a neck's run failed; its row and error are in {batch_dir / 'index.html'}.")
        dirs.append(batch_dir)
    return dirs
