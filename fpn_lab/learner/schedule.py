"""The one-cycle schedule's shape as a run may set it; checked without importing fastai."""

from __future__ import annotations

from fpn_lab.errors import ParamsError

#: fastai ``fit_one_cycle`` arguments a run may set: (fastai's default, lower bound, upper bound or None).
ONE_CYCLE_ARGS = {"pct_start": (0.25, 0.0, 1.0), "div": (25.0, 1.0, None), "div_final": (1e5, 1.0, None)}


def check_one_cycle(one_cycle: dict | None) -> dict:
    """Return ``one_cycle`` as a dict after checking it (``None`` -> ``{}``).

    Raises:
        ParamsError: not a mapping, an unknown key, or a value out of range (``0 < pct_start < 1``,
            ``div`` and ``div_final`` >= 1).
    """
    if one_cycle is None:
        return {}
    if not isinstance(one_cycle, dict):
        raise ParamsError(f"one_cycle must be a mapping such as {{pct_start: 0.15}}; got {one_cycle!r}.")
    for key, value in one_cycle.items():
        if key not in ONE_CYCLE_ARGS:
            raise ParamsError(f"one_cycle: unknown argument {key!r}; allowed: {sorted(ONE_CYCLE_ARGS)} "
                              "(fastai fit_one_cycle's schedule shape).")
        _, low, high = ONE_CYCLE_ARGS[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            low < value < high if high is not None else value >= low)
        if not ok:
            bound = f"between {low} and {high} (exclusive)" if high is not None else f">= {low}"
            raise ParamsError(f"one_cycle: {key} must be a number {bound}; got {value!r}.")
    return dict(one_cycle)


#: Optimisers the notebooks' ``opt`` parameter takes (``recipe``: the preset's mmdet recipe).
OPTIMISERS = ("adam", "sgd", "recipe")


def check_training_params(params: dict) -> None:
    """The training parameters of a notebook run (``epochs``, ``batch_size``, ``no_aug_epochs``, ``opt``,
    ``one_cycle``), as far as they are given; absent keys are not checked.

    Raises:
        ParamsError: ``epochs`` or ``batch_size`` below 1, ``no_aug_epochs`` below 0, an ``opt`` outside
            :data:`OPTIMISERS`, or a bad ``one_cycle`` (:func:`check_one_cycle`).
    """
    if "one_cycle" in params:
        check_one_cycle(params["one_cycle"])
    for key in ("epochs", "batch_size"):
        if isinstance(params.get(key), int) and params[key] < 1:
            raise ParamsError(f"{key}: {params[key]} must be a positive int.")
    if isinstance(params.get("no_aug_epochs"), int) and params["no_aug_epochs"] < 0:
        raise ParamsError(f"no_aug_epochs: {params['no_aug_epochs']} must be >= 0 (0: off; N: the last N epochs "
                          "without augmentation).")
    if "opt" in params and params["opt"] not in OPTIMISERS:
        raise ParamsError(f"opt: {params['opt']!r} is not one of {list(OPTIMISERS)}.")
