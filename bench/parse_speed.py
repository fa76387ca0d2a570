"""Parse time of a generated 10,000-image dataset, COCO JSON and a VOC folder.

Images are tiny PNGs (the parsers read only image headers for the real size); each image gets
8 boxes, a few of them degenerate so the drop/clip paths run too. Prints seconds per parse
(median of ``--repeats``) and appends nothing: copy the table into bench/RESULTS.md.

    .venv/bin/python bench/parse_speed.py            # 10,000 images
    .venv/bin/python bench/parse_speed.py --quick    # 200 images (smoke test)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fpn_lab.data.parsers import COCOBBoxParser, VOCBBoxParser  # noqa: E402
from fpn_lab.data.splits import SingleSplitSplitter  # noqa: E402


def make_dataset(root: Path, n: int) -> None:
    images, anns = root / "images", []
    images.mkdir()
    (root / "voc").mkdir()
    Image.new("RGB", (64, 48)).save(images / "0.png")
    template = (images / "0.png").read_bytes()
    coco_images = []
    for i in range(n):
        (images / f"{i}.png").write_bytes(template)
        coco_images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        objs = []
        for k in range(8):
            box = [k, k, 10 + k * 5, 8 + k * 4] if k < 7 else [5, 5, 5, 9]  # the last one is zero-area
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + k % 3,
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "iscrowd": 0})
            objs.append(f"<object><name>c{k % 3}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
                        f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")
        (root / "voc" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>64</width><height>48</height></size>"
            + "".join(objs) + "</annotation>")
    cats = [{"id": c, "name": f"c{c - 1}"} for c in (1, 2, 3)]
    (root / "coco.json").write_text(json.dumps({"images": coco_images, "annotations": anns, "categories": cats}))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats = 200, 1
    logging.getLogger("fpn_lab.data").setLevel(logging.ERROR)  # 10,000 zero-area warnings are not the point
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root, args.images)
        coco = timed(lambda: COCOBBoxParser(root / "coco.json", root / "images").parse(SingleSplitSplitter())[0], args.repeats)
        voc = timed(lambda: VOCBBoxParser(root / "voc", root / "images").parse(SingleSplitSplitter())[0], args.repeats)
    print(f"| format | images | boxes | median s ({args.repeats} runs) |\n| --- | --- | --- | --- |")
    print(f"| COCO JSON | {args.images} | {8 * args.images} | {coco:.2f} |")
    print(f"| VOC folder | {args.images} | {8 * args.images} | {voc:.2f} |")


if __name__ == "__main__":
    main()
