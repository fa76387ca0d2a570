"""The only package of fpn_lab that imports mmdet and mmengine, and only when a model is built.

* :mod:`.config` loads a preset's mmdet config from the mmdet wheel and applies fpn_lab's
  per-run choices (class count, pretrained or not, neck).
* :mod:`.wrapper` builds the detector and wraps it in :class:`~.wrapper.MMDetModel`, a plain
  ``nn.Module`` taking fpn_lab batches and returning losses or predictions as plain tensors.
* :mod:`.mmcv_ext` and :mod:`.mmcv_ops`: mmcv's compiled operators on torchvision's kernels,
  registered here, before any import of mmcv.ops, where mmcv has no compiled extension.
"""

from fpn_lab.mmdet_adapter.mmcv_ext import install as _install

_install()
