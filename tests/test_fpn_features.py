"""FPN feature maps per level and the level each box is assigned to."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fpn_lab.data.dataloaders import Dataset, collate  # noqa: E402
from fpn_lab.data.transforms import resize_and_pad  # noqa: E402
from fpn_lab.mmdet_adapter.features import assigned_levels, neck_features  # noqa: E402
from fpn_lab.models.build import build_model  # noqa: E402
from fpn_lab.viz.draw import show_fpn_features  # noqa: E402


@pytest.mark.parametrize("name", ["retinanet_r18_fpn_1x", "vfnet_r50_fpn_1x", "fcos_r50-caffe_fpn_1x",
                                  "faster_rcnn_r50_fpn_1x", "yolox_tiny_pafpn_300e"])
def test_levels_and_assignment(name, bccd_records):
    parser, train, _ = bccd_records
    model = build_model(name, num_classes=3)
    size = 640 if name.startswith("fcos") else 256  # FCOS's P3 takes boxes up to 128 px: at 256 px, every BCCD box
    ds = Dataset(train[:1], resize_and_pad(size))
    images, targets = collate([ds[0]])
    feats = neck_features(model, images, targets)
    assert [f.shape[-1] for f in feats] == [size // 2 ** int(p[1:]) for p in model.levels]
    (levels,) = assigned_levels(model, images, targets)
    assert levels.shape == (len(targets[0]["boxes"]),) and ((levels >= -1) & (levels < len(feats))).all()
    # RetinaNet (MaxIoU on level-sized anchors) and FCOS (a regress range per level): bigger boxes land on coarser levels
    if name in ("retinanet_r18_fpn_1x", "fcos_r50-caffe_fpn_1x"):
        sizes = np.sqrt(np.prod(targets[0]["boxes"].numpy()[:, 2:] - targets[0]["boxes"].numpy()[:, :2], axis=1))
        wbc = targets[0]["labels"].numpy() == parser.class_map.index("WBC")
        plt_ = targets[0]["labels"].numpy() == parser.class_map.index("Platelets")
        if wbc.any() and plt_.any():
            assert levels[wbc].max() > levels[plt_].min()
        assert np.corrcoef(sizes[levels >= 0], levels[levels >= 0])[0, 1] > 0.5
    fig = show_fpn_features(model, ds, 0, parser.class_map.names)
    assert len(fig.axes) == len(feats) + 2  # input, one panel per level, colour bar
