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
