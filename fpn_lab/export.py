"""Export a trained detector to ONNX and predict with onnxruntime, with the PyTorch path's boxes.

The exported graph is the network alone, mmdet's ``tensor`` mode: preprocessed images
(``float32[B, 3, S, S]``, after the detector's own preprocessor: mean / std and channel order) to
each level's raw head outputs (:meth:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel.head_outputs`).
What happens before and after it is the PyTorch path's own code, not a copy: the letterbox
(:class:`~fpn_lab.data.transforms.Letterbox`) and the preprocessor before, the head's
``predict_by_feat`` (decoding, score threshold, NMS) after
(:meth:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel.decode`), run by :class:`OnnxDetector` on a
weightless copy of the model rebuilt from the config stored in the ONNX file. mmdeploy does not support
this stack (torch 2.14, mmdet 3.3); the export is torch's own (``torch.onnx.export(..., dynamo=True)``).

The ONNX file's metadata (``metadata_props``, key ``fpn_lab``, JSON) holds everything prediction
needs besides onnxruntime: ``preset``, ``class_names`` (label order), ``image_size``,
``pad_position``, ``pad_value``, ``neck`` / ``neck_args``, the resolved mmdet ``config``,
``outputs`` (output names grouped as ``predict_by_feat`` takes them), ``levels``, ``opset``,
``dynamic_batch`` and ``fpn_lab_version``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fpn_lab.core.class_map import ClassMap
from fpn_lab.errors import ModelError, ParamsError
from fpn_lab.extras import require

#: ONNX opset of the export: 19 is the first with ``DeformConv`` (VFNet's head).
DEFAULT_OPSET = 19
METADATA_KEY = "fpn_lab"


def output_names(model) -> list[list[str]]:
    """Names of the raw outputs, grouped as the head's ``predict_by_feat`` takes them: the
    group is that argument's name, then the level, e.g. ``[["cls_scores_P3", ...], ["bbox_preds_P3",
    ...], ["objectnesses_P3", ...]]`` for YOLOX."""
    import inspect

    params = [p for p in inspect.signature(model.head.predict_by_feat).parameters if p != "self"]
    groups = _head_output_structure(model)
    return [[f"{params[g]}_{level}" for level in model.levels[:n]] for g, n in enumerate(groups)]


def _head_output_structure(model) -> list[int]:
    import torch

    side = max(model.min_input_side, 64)
    images, geometries = _blank_batch(model, side, 1)
    with torch.no_grad():
        inputs, _ = model.predict_inputs(images, geometries)
        outs = model.head_outputs(inputs)
    return [len(group) for group in outs]


def _blank_batch(model, image_size: int, batch: int):
    """``batch`` letterboxed mid-grey images (a valid input; the export traces shapes, not values)."""
    import torch

    from fpn_lab.data.transforms import Letterbox

    box = Letterbox(image_size, model.pad_value)
    out, _, geometry = box(np.full((image_size, image_size, 3), 114, np.uint8))
    images = torch.from_numpy(np.stack([out] * batch)).permute(0, 3, 1, 2).contiguous()
    return images, [geometry] * batch


def export_onnx(model, image_size: int, path: str | Path, *, class_names, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, pad_position: str = "top_left") -> Path:
    """Export ``model``'s network (preprocessed images to raw head outputs) to an ONNX file.

    Args:
        model: :class:`~fpn_lab.mmdet_adapter.wrapper.MMDetModel` (its train / eval mode is restored).
        image_size: the input side in pixels (a multiple of 32), as trained; height and width are fixed.
        path: the ``.onnx`` file to write (atomically: a temporary file, then renamed).
        class_names: the :class:`~fpn_lab.core.class_map.ClassMap` (names in label order and the
            source's category ids, both stored in the metadata), or the names alone (ids
            ``label + 1``).
        opset: the ONNX opset (at least 19 for VFNet's ``DeformConv``).
        dynamic_batch: let the batch dimension vary (traced with 2 images); else 1 image per run.
        pad_position: the letterbox placement the model was trained with.

    mmcv operators are replaced by torchvision's for the export
    (:func:`fpn_lab.mmdet_adapter.onnx_ops.exportable`) or the export is refused.

    Returns:
        ``path``.

    Raises:
        ModelError: a two-stage detector (Faster R-CNN: RoIAlign on the proposals after NMS),
            the number of class names differs from the head's, an mmcv operator that
            cannot be exported, an ``image_size`` below the neck's minimum, or the exporter failed
            (its message kept).
        ParamsError: a bad ``image_size`` or ``opset``.
        MissingExtraError: onnx, onnxscript or onnxruntime is not installed (the ``export`` extra).
    """
    require("export", "export_onnx", "onnx", "onnxscript", "onnxruntime")
    import onnx
    import torch

    from fpn_lab import __version__
    from fpn_lab.checkpoint import _plain
    from fpn_lab.data.transforms import Letterbox
    from fpn_lab.metrics.coco import as_class_map
    from fpn_lab.mmdet_adapter.onnx_ops import exportable
    from fpn_lab.models.build import check_num_classes

    if model.two_stage:
        raise ModelError(f"export_onnx: {model.preset.name} is a two-stage detector, which this export does not cover: "
                         "its RoI head runs on the proposals its RPN keeps after NMS, cropped with RoIAlign (mmcv's "
                         "RoIAlign and a data-dependent number of boxes between the stages), while the export is the "
                         "network up to per-level head outputs. Predict with the PyTorch model (predict_images), or "
                         "export a one-stage preset (RetinaNet, FCOS, VFNet, YOLOX).")
    class_map = as_class_map(class_names)
    check_num_classes(model, class_map, "export_onnx")
    try:
        Letterbox(image_size)
    except Exception as e:
        raise ParamsError(f"export_onnx: {e}") from None
    if image_size < model.min_input_side:
        raise ModelError(f"export_onnx: {type(model.neck).__name__} needs inputs of at least {model.min_input_side} px; "
                         f"got image_size {image_size}.")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ParamsError(f"opset must be an int >= {DEFAULT_OPSET} (the first with DeformConv); got {opset!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        names = output_names(model)
        images, geometries = _blank_batch(model, image_size, 2 if dynamic_batch else 1)
        with torch.no_grad():
            inputs, _ = model.predict_inputs(images, geometries)
        inputs = inputs.contiguous()
        network = _network(model)
        dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
        tmp = path.with_name(path.name + ".tmp.onnx")
        with exportable(model.detector), torch.no_grad():
            try:
                program = torch.onnx.export(network, (inputs,), dynamo=True, opset_version=opset,
                                            input_names=["images"], output_names=[n for g in names for n in g],
                                            dynamic_shapes=dynamic, custom_translation_table=_translations(),
                                            verbose=False)
            except Exception as e:  # the exporter's own errors: keep their text
                raise ModelError(f"torch.onnx.export failed for {model.preset.name}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:500]}") from e
        try:
            program.save(str(tmp))
            proto = onnx.load(str(tmp))
            meta = {"preset": model.preset.name, "class_names": list(class_map.names),
                    "category_ids": [int(c) for c in class_map.category_ids], "image_size": int(image_size),
                    "pad_position": pad_position, "pad_value": [float(v) for v in model.pad_value],
                    **getattr(model, "neck_choice", {"neck": None, "neck_args": {}}), "config": _plain(model.cfg.to_dict()),
                    "outputs": names, "levels": list(model.levels), "opset": opset, "dynamic_batch": bool(dynamic_batch),
                    "input": "images: float32[B, 3, S, S] after the detector's preprocessor", "fpn_lab_version": __version__}
            del proto.metadata_props[:]
            entry = proto.metadata_props.add()
            entry.key, entry.value = METADATA_KEY, json.dumps(meta)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
            tmp.replace(path)
        finally:  # nothing half-written is left: the temporary file and any external-data file beside it
            for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
                leftover.unlink(missing_ok=True)
    finally:
        model.train(was_training)
    return path


def export_file(source: Path, *, output: Path | None = None, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False) -> tuple[Path, float]:
    """``fpn-lab export``: export the checkpoint ``source`` (or a run folder's ``model.pth``) to
    ``output`` (default ``model.onnx`` beside it), then load it with :class:`OnnxDetector` and
    compare its raw outputs with PyTorch's on a test input.

    Returns:
        ``(output, largest absolute difference)``.

    Raises:
        ModelError: no checkpoint at ``source``, :func:`export_onnx`'s errors, or the exported
            model disagrees with PyTorch (another number of outputs or shapes, a non-finite value,
            or a difference beyond ``rtol`` :data:`CHECK_RTOL` / ``atol`` :data:`CHECK_ATOL`); the
            ONNX file is removed then.
    """
    import torch

    from fpn_lab.checkpoint import load_checkpoint

    ckpt = source / "model.pth" if source.is_dir() else source
    if not ckpt.is_file():
        raise ModelError(f"fpn-lab export: {source} is neither a checkpoint file nor a run folder holding model.pth.")
    model, info = load_checkpoint(ckpt)
    output = output or ckpt.with_suffix(".onnx")
    export_onnx(model, info["image_size"], output, class_names=info["class_map"], opset=opset,
                dynamic_batch=dynamic_batch, pad_position=info.get("pad_position", "top_left"))
    images, geometries = _blank_batch(model, info["image_size"], 1)
    images = torch.randint(0, 256, images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inputs, _ = model.predict_inputs(images, geometries)
        reference = [t.numpy() for group in model.head_outputs(inputs) for t in group]
    got = OnnxDetector(output).raw_outputs(inputs)
    try:
        return output, check_outputs(got, reference)
    except ModelError as e:
        output.unlink(missing_ok=True)
        output.with_name(output.name + ".data").unlink(missing_ok=True)
        raise ModelError(f"fpn-lab export: {e} The exported file {output} was removed.") from None


#: Tolerances of :func:`check_outputs` (``numpy.allclose``): float32 kernels of onnxruntime and
#: PyTorch sum in different orders; a wrong translation differs by far more.
CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-3


def check_outputs(got: list, reference: list) -> float:
    """Compare onnxruntime's raw outputs ``got`` with PyTorch's ``reference`` (lists of arrays, in
    the same order). Returns the largest absolute difference.

    Raises:
        ModelError: the counts or shapes differ, a value is NaN or infinite on either side, or a
            difference exceeds ``rtol`` :data:`CHECK_RTOL` / ``atol`` :data:`CHECK_ATOL`.
    """
    if len(got) != len(reference):
        raise ModelError(f"onnxruntime gave {len(got)} outputs, PyTorch {len(reference)}.")
    worst = 0.0
    for k, (a, b) in enumerate(zip(got, reference)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ModelError(f"output {k}: onnxruntime's shape {a.shape} differs from PyTorch's {b.shape}.")
        for side, arr in (("onnxruntime", a), ("PyTorch", b)):
            if not np.isfinite(arr).all():
                raise ModelError(f"output {k}: {side} gave {int((~np.isfinite(arr)).sum())} non-finite values "
                                 "(NaN or inf); the checkpoint's weights may be non-finite.")
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(a, b, rtol=CHECK_RTOL, atol=CHECK_ATOL):
            raise ModelError(f"output {k}: onnxruntime and PyTorch differ by up to {diff:.3g} (tolerance rtol "
                             f"{CHECK_RTOL}, atol {CHECK_ATOL}).")
    return worst


def _translations() -> dict:
    """ONNX translations torch's exporter lacks: ``torchvision::deform_conv2d`` (used by
    :class:`~fpn_lab.mmdet_adapter.onnx_ops.TorchvisionDeformConv2d`) as ONNX ``DeformConv``, from
    onnxscript's torchlib (the one torch bundles has no vision operators)."""
    import torch
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    from onnxscript.function_libs.torch_lib.ops.vision import torchvision_deform_conv2d

    return {torch.ops.torchvision.deform_conv2d.default: torchvision_deform_conv2d}


def _network(model):
    """``model.head_outputs`` as a module with a flat tuple of outputs (what the exporter traces)."""
    import torch

    class Network(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            return tuple(t for group in self.model.head_outputs(inputs) for t in group)

    return Network(model).eval()


class OnnxDetector:
    """A detector exported by :func:`export_onnx`, run by onnxruntime.

    Needs only the ``.onnx`` file: the class names, preset, image size and letterbox come from its
    metadata; a weightless copy of the model, rebuilt from the stored config, gives the
    preprocessing and the decoding (:meth:`MMDetModel.decode`), so predictions are made as the
    PyTorch path makes them.

    Args:
        path: the ``.onnx`` file.
        num_threads: onnxruntime's intra-op threads; 0: its default (the machine's cores).

    Attributes:
        class_names: the class names, in label order.
        class_map: the names with the source's category ids.
        image_size: the fixed input side in pixels the file was exported at.
        pad_position: where the letterbox puts the image (``"top_left"`` or ``"center"``).
        pad_value: the letterbox fill (RGB 0..255).
        preset: the preset name.
        num_classes: the number of classes.
        metadata: the file's whole ``fpn_lab`` metadata dict.

    Raises:
        ModelError: the file is missing, not ONNX, or not exported by fpn_lab (no metadata).
    """

    def __init__(self, path: str | Path, *, num_threads: int = 0):
        require("export", "OnnxDetector", "onnxruntime")
        import onnxruntime as ort

        from fpn_lab.mmdet_adapter.wrapper import build_detector_from_config
        from fpn_lab.models.registry import get_preset

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"OnnxDetector: {path} is not a file; export one with `fpn-lab export RUN_DIR`.")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"OnnxDetector: onnxruntime cannot load {path}: {str(e).splitlines()[0][:300]}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ModelError(f"OnnxDetector: {path} has no '{METADATA_KEY}' metadata, so it was not exported by fpn_lab's "
                             "export_onnx; its class names, image size and decoding are unknown.")
        self.metadata = json.loads(raw)
        self.preset = get_preset(self.metadata["preset"])
        self.class_names = list(self.metadata["class_names"])
        self.class_map = ClassMap(self.class_names, self.metadata.get("category_ids"))
        self.image_size = int(self.metadata["image_size"])
        self.pad_position = self.metadata["pad_position"]
        self.pad_value = tuple(float(v) for v in self.metadata["pad_value"])
        self.model = build_detector_from_config(self.metadata["config"], self.preset).eval()
        self.num_classes = self.model.num_classes
        self.path = path

    def raw_outputs(self, inputs) -> list[np.ndarray]:
        """onnxruntime's outputs for preprocessed ``inputs`` (``float32[B, 3, S, S]``), flat, in the
        order of ``metadata["outputs"]``."""
        array = inputs.detach().cpu().contiguous().numpy() if hasattr(inputs, "detach") else np.ascontiguousarray(inputs)
        return self.session.run(None, {"images": array.astype(np.float32, copy=False)})

    def predict(self, images, geometries) -> list[dict]:
        """As :meth:`MMDetModel.predict`: letterboxed ``uint8[B, 3, S, S]`` images and their
        geometries to detections in network-input pixels."""
        import torch

        inputs, samples = self.model.predict_inputs(images, geometries)
        flat = iter(torch.from_numpy(a) for a in self.raw_outputs(inputs))
        outputs = tuple([next(flat) for _ in group] for group in self.metadata["outputs"])
        with torch.no_grad():
            return self.model.decode(outputs, samples)

    def predict_images(self, images, *, batch_size: int = 8, on_error: str = "raise") -> list[dict]:
        """Detections on image files or ``uint8[H, W, 3]`` RGB arrays, boxes xyxy in each image's own
        pixels: :func:`fpn_lab.inference.predict_images` with this file's image size and letterbox
        (the same result dicts; a dynamic-batch export takes ``batch_size`` images per run, a fixed
        one 1)."""
        from fpn_lab.inference import predict_images

        if not self.metadata.get("dynamic_batch"):
            batch_size = 1
        return predict_images(self, images, image_size=self.image_size, batch_size=batch_size,
                              pad_position=self.pad_position, on_error=on_error)
