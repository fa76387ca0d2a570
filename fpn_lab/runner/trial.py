"""The in-notebook half of ``fpn-lab tune``: the Optuna trial a run belongs to, and its pruning callback.

``fpn-lab tune`` (:mod:`fpn_lab.runner.tune`) runs each trial as a normal notebook run with the trial's
parameters; the kernel learns which trial it is from the environment variable :data:`ENV` (JSON:
``storage``, ``study``, ``trial_id``, ``monitor``, ``pruner``), which the driver sets for that run
only (Optuna keeps no pruner in its storage: the kernel builds the driver's, :func:`make_pruner`). The
run's learner then reports the monitored column (``AP``, ``AP50``, ``valid_loss``...) to the study
after every epoch, and stops when Optuna's pruner says so, through optuna-integration's
``FastAIPruningCallback``: the training cell raises ``optuna.TrialPruned`` and the run's
``metrics.json`` says ``status: pruned``. Without the variable nothing changes.
"""

from __future__ import annotations

import json
import os

from fpn_lab.errors import ParamsError

#: The environment variable that tells a notebook run which Optuna trial it is.
ENV = "FPN_LAB_TUNE"
#: The exception name a pruned trial's training cell ends with (optuna's).
PRUNED = "TrialPruned"


def open_storage(storage: str):
    """An Optuna storage from ``storage``: a database URL (``sqlite:///study.db``,
    ``postgresql://...``: Optuna's RDB storage) or a file path (a journal file, which several
    processes on shared storage can write: Optuna's ``JournalFileBackend``).

    Raises:
        ParamsError: an empty ``storage``.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not isinstance(storage, str) or not storage:
        raise ParamsError(f"storage must be a database URL (sqlite:///study.db) or a journal file path; got {storage!r}.")
    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    return JournalStorage(JournalFileBackend(storage))


#: Pruners a search space may name.
PRUNERS = ("median", "none")


def make_pruner(name: str):
    """Optuna's pruner for ``name``: ``"median"``, a ``MedianPruner`` that starts after one finished
    trial (a trial stops when its best value so far is worse than the median of the finished trials'
    at the same epoch), or ``"none"``.

    Raises:
        ParamsError: another name.
    """
    import optuna

    if name not in PRUNERS:
        raise ParamsError(f"pruner must be one of {list(PRUNERS)}; got {name!r}.")
    return optuna.pruners.MedianPruner(n_startup_trials=1) if name == "median" else optuna.pruners.NopPruner()


def current() -> dict | None:
    """This process's trial (``{"storage", "study", "trial_id", "monitor", "pruner"}``) or ``None`` outside
    ``fpn-lab tune``.

    Raises:
        ParamsError: the variable is set but is not the JSON object the driver writes.
    """
    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        keys = {"storage", "study", "trial_id", "monitor", "pruner"}
        if not isinstance(spec, dict) or not keys <= set(spec):
            raise ValueError(f"needs the keys {sorted(keys)}")
    except ValueError as e:
        raise ParamsError(f"{ENV} must hold the JSON object fpn-lab tune writes ({e}); got {raw!r}. Unset it to run "
                          "outside a study.") from None
    return spec


def pruning_callbacks() -> list:
    """``[FastAIPruningCallback(trial, monitor)]`` for the trial in :data:`ENV`, else ``[]``."""
    spec = current()
    if spec is None:
        return []
    from fpn_lab.extras import require

    require("tune", "fpn-lab tune", "optuna", "optuna_integration")
    import optuna
    from optuna_integration import FastAIPruningCallback

    study = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]),
                              pruner=make_pruner(spec["pruner"]))
    trial = optuna.trial.Trial(study, int(spec["trial_id"]))
    return [FastAIPruningCallback(trial, monitor=spec["monitor"])]
