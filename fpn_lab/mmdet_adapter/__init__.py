"""The only package of fpn_lab that imports mmdet and mmengine, and only when a model is built.

* :mod:`.config` loads a preset's mmdet config from the mmdet wheel and applies fpn_lab's
  per-run choices (class count, pretrained or not, neck).
* :mod:`.wrapper` builds the detector and wraps it in :class:`~.wrapper.MMDetModel`, a plain
  ``nn.Module`` taking fpn_lab batches and returning losses or predictions as plain tensors.
"""

import warnings as _warnings

# Deprecation noise from mmdet 3.3 / mmcv 2.1 on torch 2.14 (their code, not the user's): keep
# notebooks and logs readable. Filters match these exact messages only.
for _msg in (r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated",
             r"torch\.meshgrid: in an upcoming release",
             r"`torch\.jit\.script` is deprecated"):
    _warnings.filterwarnings("ignore", message=_msg)
