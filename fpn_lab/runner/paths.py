"""Paths and files of runs: the project root, paths relative to it, new run folders and atomic
JSON writes. Every module of :mod:`fpn_lab.runner` (and the notebooks) takes them from here, the
bottom of the runner's imports."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np


def project_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml`` above the package), else the cwd."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def project_path(path: str | Path) -> Path:
    """Resolve a relative path against the project root, so notebooks give the same result whether
    Jupyter runs them from ``notebooks/`` or papermill from the root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def display_path(path: str | Path) -> str:
    """``path`` relative to the project root when inside it (so reports carry no machine paths)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(project_root().resolve()))
    except ValueError:
        return str(p)


def unique_run_dir(runs_dir: str | Path, name: str) -> Path:
    """``runs_dir/name``, or ``name-2``, ``name-3``... : never an existing folder (created here)."""
    base = project_path(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = base / (name if k == 1 else f"{name}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder name under {base} for {name!r}")


def default_run_name(preset_name: str) -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset_name}"


def write_json_atomic(path: str | Path, data) -> Path:
    """Write ``data`` as JSON to ``path`` via a temp file and rename (NaN written as null)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, sort_keys=False))
    tmp.replace(path)
    return path


def _json_safe(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj
