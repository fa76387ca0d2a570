"""Shared fixtures: project paths, the shipped datasets, and a socket blocker."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# as every fpn_lab process does before mmdet: under mmcv-lite, mmcv's operators come from fpn_lab
# (tests that import mmdet or mmcv.ops themselves rely on it)
import fpn_lab.mmdet_adapter  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CASES = Path(__file__).parent / "data" / "cases"  # copies of ../shared/cases, so they run everywhere
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def bccd_records():
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import VOCImageSetSplitter

    parser = VOCBBoxParser(DATA / "bccd" / "annotations", DATA / "bccd" / "images")
    train, test = parser.parse(VOCImageSetSplitter(DATA / "bccd" / "ImageSets" / "Main"))
    return parser, train, test


def perturbed(model, scale: float = 0.01):
    """``model`` in eval mode with every parameter moved by ``scale`` x N(0, 1) (torch seeded with 0 first),
    so that a checkpoint that fails to load a tensor cannot predict what the model predicts."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to open a network connection fail at once."""

    def refuse(*args, **kwargs):
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def coco_fridge(tmp_path_factory):
    """A small COCO set made from data/fridge: ``<dir>/annotations.json`` + ``<dir>/images/*.jpg``.

    The 6 fridge images and their 12 VOC boxes (4 classes), written the awkward ways real COCO
    files are: category ids with gaps and listed out of id order (carton 0, can 3, milk_bottle 7,
    water_bottle 12, so labels 0-3 are carton, can, milk_bottle, water_bottle), string image ids
    (``"fridge-10"`` ... ``"fridge-15"``), ``15.jpg`` without annotations (a negative) and the
    first box of ``14.jpg`` marked ``iscrowd=1``. Random split with seed 42: 5 train, 1 valid
    (``10.jpg``). Session-scoped: copy it before changing anything in it.
    """
    import json
    import shutil
    import xml.etree.ElementTree as ET

    out = tmp_path_factory.mktemp("coco_fridge")
    shutil.copytree(DATA / "fridge" / "images", out / "images")
    cat_ids = {"carton": 0, "can": 3, "milk_bottle": 7, "water_bottle": 12}
    images, anns = [], []
    for xml in sorted((DATA / "fridge" / "annotations").glob("*.xml")):
        root = ET.parse(xml).getroot()
        image_id = f"fridge-{xml.stem}"
        images.append({"id": image_id, "file_name": root.findtext("filename"),
                       "width": int(root.findtext("size/width")), "height": int(root.findtext("size/height"))})
        for k, obj in enumerate(root.iter("object") if xml.stem != "15" else []):
            x1, y1, x2, y2 = (float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_ids[obj.findtext("name")],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(xml.stem == "14" and k == 0)})
    categories = [{"id": i, "name": n} for n, i in sorted(cat_ids.items(), key=lambda kv: -kv[1])]
    (out / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return out


def pycocotools_stats(annotation_file, detections) -> list[float]:
    """COCOeval run by hand on the user's own file, as anyone scoring predictions.json would."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(detections))), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"


@contextlib.contextmanager
def offline_chromium(*allowed: str):
    """Headless Chromium (Debian's, never playwright's download) whose pages may load ``file:``,
    ``data:`` and ``blob:`` URLs and those starting with ``allowed``; every other request is aborted
    and recorded. Yields ``(new_page, blocked)``: a function making a routed page (1280 x 900) and
    the list of blocked URLs."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def only_local(route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:", *allowed)):
            return route.continue_()
        blocked.append(url)
        return route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            def new_page():
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.route("**/*", only_local)
                return page

            yield new_page, blocked
        finally:
            browser.close()

