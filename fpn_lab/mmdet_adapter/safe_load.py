"""The allow-list for ``torch.load(weights_only=True)`` of OpenMMLab checkpoints.

mmdet 3 checkpoints keep training state in ``meta`` and ``message_hub`` (numpy arrays and
dtypes, mmengine's ``HistoryBuffer``). These are allowed by name; anything else still fails, so
a checkpoint cannot run arbitrary code on load (no blanket ``weights_only=False``).
"""

from __future__ import annotations

import importlib


def allowed_globals() -> list:
    import numpy as np

    allowed = [np.dtype, np.ndarray, type(np.dtype("float32")), type(np.dtype("float64")), type(np.dtype("int64"))]
    multiarray = importlib.import_module("numpy.core.multiarray" if np.__version__.startswith("1.")
                                         else "numpy._core.multiarray")
    allowed += [multiarray._reconstruct, multiarray.scalar]
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed.append(HistoryBuffer)
    return allowed
