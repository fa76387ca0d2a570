"""fpn_lab: IceVision-style object detection notebooks on MMDetection FPN detectors and fastai.

Importing the package is cheap: mmdet, mmengine and torch-heavy modules load only when used.
"""

__version__ = "0.1.0"

import os as _os

# albumentations checks PyPI for a newer version at import; fpn_lab runs offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import warnings as _warnings

# Deprecation noise from mmdet 3.3 / mmcv 2.1 / fastai on torch 2.14 (their code, not the user's): keep
# notebooks and logs readable. Filters match these exact messages only.
for _msg in (r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated",
             r"torch\.meshgrid: in an upcoming release",
             r"`torch\.jit\.script` is deprecated"):
    _warnings.filterwarnings("ignore", message=_msg)
