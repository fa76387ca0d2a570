"""Optional features and the extras of ``pyproject.toml`` that install them.

``pip install -e .`` gives training, evaluation and the headless notebook runs; some features need
more (``make`` installs everything, pinned, from ``requirements.txt``):

* ``tracking``: ``track: tensorboard`` (tensorboard) and ``track: mlflow`` (mlflow);
* ``export``: ``fpn-lab export``, :func:`fpn_lab.export.export_onnx` and
  :class:`fpn_lab.export.OnnxDetector` (onnx, onnxscript, onnxruntime);
* ``tune``: ``fpn-lab tune`` (optuna, optuna-integration);
* ``notebook``: ``make lab`` (JupyterLab);
* ``dev``: the tests and benchmarks.
"""

from __future__ import annotations

import importlib.util

from fpn_lab.errors import MissingExtraError


def require(extra: str, feature: str, *modules: str) -> None:
    """Raise :class:`~fpn_lab.errors.MissingExtraError` unless every module in ``modules`` can be
    imported; the message names ``feature``, the missing modules and the extra to install. Looks
    the modules up without importing them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                                f"installed. Fix: pip install 'fpn_lab[{extra}]' (in a clone: pip install -e "
                                f"'.[{extra}]'), or run `make setup`, which installs every extra.")
