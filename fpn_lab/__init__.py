"""fpn_lab: IceVision-style object detection notebooks on MMDetection FPN detectors and fastai.

Importing the package is cheap: mmdet, mmengine and torch-heavy modules load only when used.
"""

__version__ = "0.1.0"

import os as _os

# albumentations checks PyPI for a newer version at import; fpn_lab runs offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
