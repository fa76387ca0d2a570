"""The allow-list for ``torch.load(weights_only=True)`` of OpenMMLab checkpoints.

mmdet 3 checkpoints keep training state in ``meta`` and ``message_hub`` (numpy arrays and
dtypes, mmengine's ``HistoryBuffer``). These are allowed by name; anything else still fails, so
a checkpoint cannot run arbitrary code on load (no blanket ``weights_only=False``).

A checkpoint written by mmengine's ``Runner`` (``epoch_N.pth``) pickles each ``HistoryBuffer``'s
statistics methods as ``getattr(HistoryBuffer, "mean")``: ``builtins.getattr`` is therefore
allowed in a restricted form, :func:`history_buffer_getattr`, which reads public attributes of
``HistoryBuffer`` only.
"""

from __future__ import annotations

import importlib


def history_buffer_getattr(obj, name: str):
    """``getattr`` limited to public attributes of mmengine's ``HistoryBuffer`` class.

    Raises:
        pickle.UnpicklingError: any other object or a private/dunder name (the checkpoint is
            refused rather than letting its pickle reach arbitrary attributes).
    """
    import pickle

    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is not HistoryBuffer or name.startswith("_"):
        raise pickle.UnpicklingError(f"checkpoint pickle asks for getattr({obj!r}, {name!r}); only public attributes "
                                     "of mmengine's HistoryBuffer are allowed when loading weights safely.")
    return getattr(obj, name)


def allowed_globals() -> list:
    """Globals (or ``(substitute, "module.name")`` pairs) for ``torch.serialization.safe_globals``."""
    import numpy as np

    allowed = [np.dtype, np.ndarray, type(np.dtype("float32")), type(np.dtype("float64")), type(np.dtype("int64"))]
    multiarray = importlib.import_module("numpy.core.multiarray" if np.__version__.startswith("1.")
                                         else "numpy._core.multiarray")
    allowed += [multiarray._reconstruct, multiarray.scalar]
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed.append(HistoryBuffer)
    allowed.append((history_buffer_getattr, "builtins.getattr"))
    return allowed
