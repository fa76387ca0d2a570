"""onnxruntime against PyTorch for one trained checkpoint: latency per image, peak memory, and the AP of both on
BCCD test (issue #17).

    .venv/bin/python bench/onnx_export.py runs/<run>/model.pth

The checkpoint is exported once (``fpn_lab.export.export_onnx``, fixed batch of 1). Each path then runs in a fresh
process of its own (so peak memory is its own): the 72 BCCD test images predicted one at a time through
``fpn_lab.inference.evaluation`` (letterbox, the network, the head's decoding: the same code but for the network),
2 threads (torch ``set_num_threads``, onnxruntime ``intra_op_num_threads``). Latency is the median over the images
of one ``predict`` call after 5 warm-up calls. Memory: the process's resident set (``VmRSS`` in ``/proc/self/status``)
after the imports, and its largest value sampled after loading the model and after every prediction, so the
figure is what the model and its runtime add (``ru_maxrss`` is no use here: the imports set the high-water mark). Results are appended to ``bench/logs/onnx_export.txt``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(kind: str, checkpoint: str, onnx_path: str) -> dict:
    import torch

    from fpn_lab.data.dataloaders import Dataset
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import VOCImageSetSplitter
    from fpn_lab.data.transforms import resize_and_pad
    from fpn_lab.inference import evaluate, predict_dataset

    torch.set_num_threads(2)
    base_mb = rss_mb()
    if kind == "pytorch":
        from fpn_lab.checkpoint import load_checkpoint

        model, info = load_checkpoint(checkpoint)
        size, names = info["image_size"], info["class_names"]
    else:
        from fpn_lab.export import OnnxDetector

        model = OnnxDetector(onnx_path, num_threads=2)
        size, names = model.image_size, model.class_names
    bccd = ROOT / "data" / "bccd"
    parser = VOCBBoxParser(bccd / "annotations", bccd / "images")
    _, test = parser.parse(VOCImageSetSplitter(bccd / "ImageSets" / "Main"))
    assert list(parser.class_map.names) == list(names)
    ds = Dataset(test, resize_and_pad(size))
    peak = rss_mb()
    for i in range(5):
        predict_dataset(model, ds, batch_size=1, indices=[i])
    times = []
    for i in range(len(ds)):
        t = time.perf_counter()
        predict_dataset(model, ds, batch_size=1, indices=[i])
        times.append(time.perf_counter() - t)
        peak = max(peak, rss_mb())
    result, detections = evaluate(model, ds, parser.class_map, batch_size=1)
    return {"kind": kind, "images": len(ds), "median_ms": 1000 * statistics.median(times),
            "p90_ms": 1000 * sorted(times)[int(0.9 * len(times))], "AP": result["AP"], "AP50": result["AP50"],
            "detections": len(detections), "peak_rss_mb": peak, "rss_after_imports_mb": base_mb}


def rss_mb() -> float:
    """This process's resident set now, in MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4])))
        return 0
    checkpoint = Path(sys.argv[1])
    from fpn_lab.checkpoint import load_checkpoint
    from fpn_lab.export import export_onnx

    model, info = load_checkpoint(checkpoint)
    onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
    t = time.perf_counter()
    export_onnx(model, info["image_size"], onnx_path, class_names=info["class_names"])
    export_s = time.perf_counter() - t
    rows = []
    for kind in ("pytorch", "onnxruntime"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(checkpoint), str(onnx_path)], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [f"# bench/onnx_export.py {datetime.now().isoformat(timespec='seconds')}: {checkpoint} "
             f"({info['preset']}, {info['image_size']} px), export {export_s:.1f} s, {onnx_path.stat().st_size / 1e6:.1f} MB; "
             "72 BCCD test images one at a time, 2 threads, each path in its own process, nothing else running",
             "path         median ms  p90 ms  largest RSS MiB (after imports)  AP      AP50    detections"]
    for r in rows:
        lines.append(f"{r['kind']:12s} {r['median_ms']:9.1f}  {r['p90_ms']:6.1f}  {r['peak_rss_mb']:8.0f} ({r['rss_after_imports_mb']:.0f})"
                     f"                  {r['AP']:.4f}  {r['AP50']:.4f}  {r['detections']}")
    lines.append(f"AP difference (onnxruntime - pytorch): {rows[1]['AP'] - rows[0]['AP']:+.2e}; AP50: "
                 f"{rows[1]['AP50'] - rows[0]['AP50']:+.2e}")
    text = "\n".join(lines)
    print(text)
    with (ROOT / "bench" / "logs" / "onnx_export.txt").open("a") as f:
        f.write(text + "\n" + json.dumps(rows) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
