"""The allow-list for ``torch.load(weights_only=True)`` of OpenMMLab checkpoints.

mmdet 3 checkpoints keep training state in ``meta`` and ``message_hub`` (numpy arrays and
dtypes, mmengine's ``HistoryBuffer``). These are allowed by name; anything else still fails, so
a checkpoint cannot run arbitrary code on load (no blanket ``weights_only=False``).
"""

from __future__ import annotations


def allowed_globals() -> list:
    import numpy as np

    allowed = [np.dtype, np.ndarray, type(np.dtype("float32")), type(np.dtype("float64")), type(np.dtype("int64"))]
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray._reconstruct)
    allowed.append(core.multiarray.scalar)
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed.append(HistoryBuffer)
    return allowed
