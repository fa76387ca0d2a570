"""ONNX export (fpn_lab.export): raw outputs and final boxes of onnxruntime against PyTorch for YOLOX,
RetinaNet, VFNet and FCOS, a fresh process, mmcv operators, the metadata and `fpn-lab export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DATA, ROOT
from fpn_lab.errors import ModelError

import onnxruntime  # noqa: F401,E402  (declared dependencies: a broken wheel fails here, never skips)
import onnxscript  # noqa: F401,E402

SIZE = 128
ARCHS = ["yolox_tiny_pafpn_300e", "retinanet_r18_fpn_1x", "vfnet_r50_fpn_1x", "fcos_r50-caffe_fpn_1x",
         "efficientdet_effb0_bifpn_300e"]
NAMES = ["milk_bottle", "carton", "can", "water_bottle"]


def _images():
    return sorted((DATA / "fridge" / "images").glob("*.jpg"))[:3]


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    from fpn_lab.export import OnnxDetector, export_onnx
    from fpn_lab.models.build import build_model
    from fpn_lab.runner.context import set_seed

    set_seed(0)
    model = build_model(request.param, num_classes=len(NAMES)).eval()
    # an untrained head gives every anchor the same score (the prior), so its top boxes are ties in any order:
    # random head weights make the scores and boxes depend on the image, as a trained model's do
    for p in model.head.parameters():
        p.data.normal_(0.0, 0.05 if p.dim() > 1 else 0.5)
    path = export_onnx(model, SIZE, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx", class_names=NAMES)
    return model, OnnxDetector(path), path


def _letterboxed(model):
    from fpn_lab.data.images import load_image
    from fpn_lab.data.transforms import Letterbox

    box = Letterbox(SIZE, model.preset.pad_value)
    out = [box(load_image(p)) for p in _images()]
    images = torch.from_numpy(np.stack([o[0] for o in out])).permute(0, 3, 1, 2).contiguous()
    return images, [o[2] for o in out]


def test_raw_outputs_match_pytorch(exported):
    model, detector, _ = exported
    images, geometries = _letterboxed(model)
    for i in range(len(images)):  # the export has a fixed batch of 1
        inputs, _ = model.predict_inputs(images[i:i + 1], geometries[i:i + 1])
        with torch.no_grad():
            reference = [t.numpy() for group in model.head_outputs(inputs) for t in group]
        got = detector.raw_outputs(inputs)
        assert len(got) == len(reference) == sum(map(len, detector.metadata["outputs"]))
        for name, a, b in zip([n for g in detector.metadata["outputs"] for n in g], got, reference):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=name)


def _iou(a, b):
    x1, y1 = np.maximum(a[:2], b[:, :2]).T
    x2, y2 = np.minimum(a[2:], b[:, 2:]).T
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_final_boxes_match_pytorch(exported):
    from fpn_lab.inference import predict_images

    model, detector, _ = exported
    heads = (model.detector.bbox_head, detector.model.detector.bbox_head)
    saved = [h.test_cfg["score_thr"] for h in heads]
    for h in heads:  # untrained: keep every score, so there are boxes to compare
        h.test_cfg["score_thr"] = 0.0
    try:
        files = _images()
        torch_preds = predict_images(model, files, image_size=SIZE, batch_size=1)
        onnx_preds = detector.predict_images(files)
    finally:
        for h, thr in zip(heads, saved):
            h.test_cfg["score_thr"] = thr
    for tp, op in zip(torch_preds, onnx_preds):
        assert set(tp) == set(op) == {"boxes", "scores", "labels"}
        assert len(tp["scores"]) > 0
        for box, score, label in list(zip(tp["boxes"], tp["scores"], tp["labels"]))[:20]:  # the 20 best
            same = (op["labels"] == label) & (np.abs(op["scores"] - score) <= 1e-3)
            assert same.any() and _iou(box, op["boxes"][same]).max() > 0.99, (box, score, label)


def test_metadata_says_what_the_model_is(exported):
    model, detector, _ = exported
    meta = detector.metadata
    assert (meta["preset"], meta["class_names"], meta["image_size"]) == (model.preset.name, NAMES, SIZE)
    assert meta["levels"] == list(model.levels) and meta["opset"] == 19 and meta["dynamic_batch"] is False
    assert detector.num_classes == len(NAMES)


def test_a_fresh_process_predicts_the_same(exported, tmp_path):
    from fpn_lab.export import OnnxDetector

    _, _, path = exported
    out = tmp_path / "preds.json"
    code = ("import json, sys; from fpn_lab.export import OnnxDetector; "
            f"p = OnnxDetector({str(path)!r}).predict_images({[str(f) for f in _images()]!r}); "
            f"json.dump([{{k: v.tolist() for k, v in d.items()}} for d in p], open({str(out)!r}, 'w'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(out.read_text())
    here = OnnxDetector(path).predict_images(_images())
    for f, h in zip(fresh, here):
        np.testing.assert_allclose(np.asarray(f["boxes"]).reshape(-1, 4), h["boxes"], rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(f["scores"], h["scores"], rtol=1e-6, atol=1e-7)
        assert f["labels"] == h["labels"].tolist()


def test_torchvision_deform_conv_equals_mmcv():
    from mmcv.ops import DeformConv2d

    from fpn_lab.mmdet_adapter.onnx_ops import TorchvisionDeformConv2d

    torch.manual_seed(0)
    layer = DeformConv2d(8, 6, 3, padding=1)
    ours = TorchvisionDeformConv2d(layer)
    for h, w in ((9, 7), (2, 1)):  # the second is smaller than the kernel: mmcv pads it
        x = torch.randn(2, 8, h, w)
        offset = torch.randn(2, 18, h, w) * 2
        with torch.no_grad():
            torch.testing.assert_close(ours(x, offset), layer(x, offset), rtol=1e-5, atol=1e-5)


def test_other_mmcv_operators_are_refused_by_name(tmp_path):
    from fpn_lab.export import export_onnx
    from fpn_lab.models.build import build_model

    model = build_model("vfnet_r50-mdconv_fpn_ms2x", num_classes=2)  # modulated deformable convs in the backbone
    with pytest.raises(ModelError, match=r"backbone\.layer2\.0\.conv2 \(ModulatedDeformConv2dPack\).* and \d+ more"):
        export_onnx(model, SIZE, tmp_path / "m.onnx", class_names=["a", "b"])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_arguments_are_checked(tmp_path):
    from fpn_lab.errors import ParamsError
    from fpn_lab.export import OnnxDetector, export_onnx
    from fpn_lab.models.build import build_model

    model = build_model("yolox_tiny_pafpn_300e", num_classes=2)
    with pytest.raises(ModelError, match="num_classes=2 but .* has 3 classes"):
        export_onnx(model, SIZE, tmp_path / "m.onnx", class_names=["a", "b", "c"])
    with pytest.raises(ParamsError, match="opset must be an int >= 19"):
        export_onnx(model, SIZE, tmp_path / "m.onnx", class_names=["a", "b"], opset=17)
    with pytest.raises(ParamsError, match="multiple of 32"):
        export_onnx(model, 100, tmp_path / "m.onnx", class_names=["a", "b"])
    with pytest.raises(ModelError, match="is not a file"):
        OnnxDetector(tmp_path / "missing.onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(ModelError, match="not exported by fpn_lab"):
        OnnxDetector(tmp_path / "plain.onnx")


def test_cli_export_of_a_checkpoint_with_dynamic_batch(tmp_path):
    from fpn_lab.checkpoint import save_checkpoint
    from fpn_lab.core.class_map import ClassMap
    from fpn_lab.export import OnnxDetector
    from fpn_lab.models.build import build_model

    model = build_model("yolox_tiny_pafpn_300e", num_classes=2)
    save_checkpoint(tmp_path / "model.pth", model, ClassMap(["a", "b"]), image_size=SIZE)
    proc = subprocess.run([sys.executable, "-m", "fpn_lab.cli", "export", str(tmp_path), "--dynamic-batch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "largest difference" in proc.stdout
    detector = OnnxDetector(tmp_path / "model.onnx")
    assert detector.metadata["dynamic_batch"] is True and detector.class_names == ["a", "b"]
    preds = detector.predict_images(_images(), batch_size=3)  # one run of 3 images
    assert len(preds) == 3
    proc = subprocess.run([sys.executable, "-m", "fpn_lab.cli", "export", str(tmp_path / "nothing")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "neither a checkpoint file nor a run folder" in proc.stderr


def test_export_check_fails_on_a_disagreement_nan_or_missing_output(tmp_path, monkeypatch):
    """`fpn-lab export` compared onnxruntime with PyTorch but exited 0 whatever it found: a NaN was
    lost in max() and zip() dropped a missing output."""
    from fpn_lab.checkpoint import save_checkpoint
    from fpn_lab.core.class_map import ClassMap
    from fpn_lab.export import OnnxDetector, check_outputs, export_file
    from fpn_lab.models.build import build_model

    ref = [np.zeros((1, 4), np.float32), np.ones((1, 2), np.float32)]
    assert check_outputs([r.copy() for r in ref], ref) == 0.0
    with pytest.raises(ModelError, match="non-finite"):
        check_outputs([np.full((1, 4), np.nan, np.float32), ref[1]], ref)
    with pytest.raises(ModelError, match="1 outputs, PyTorch 2"):
        check_outputs(ref[:1], ref)
    with pytest.raises(ModelError, match="differ by up to 0.5"):
        check_outputs([ref[0] + 0.5, ref[1]], ref)

    model = build_model("yolox_tiny_pafpn_300e", num_classes=2)
    save_checkpoint(tmp_path / "model.pth", model, ClassMap(["a", "b"]), image_size=SIZE)
    real = OnnxDetector.raw_outputs
    monkeypatch.setattr(OnnxDetector, "raw_outputs", lambda self, x: [o * np.nan for o in real(self, x)])
    with pytest.raises(ModelError, match="non-finite.*was removed"):
        export_file(tmp_path)
    assert not (tmp_path / "model.onnx").exists()
