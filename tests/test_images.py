"""The one image decoder: R15's 16-bit/RGBA/CMYK images, EXIF orientation, unreadable and truncated files (N09)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import CASES
from fpn_lab.data.images import check_image, image_size, load_image
from fpn_lab.data.parsers import COCOBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.errors import DataError


@pytest.mark.parametrize("name", ["gray16.png", "rgba.png", "cmyk.jpg"])
def test_r15_every_mode_loads_as_8bit_rgb_with_the_object_visible(name):
    parser = COCOBBoxParser(CASES / "R15" / "annotations.json", CASES / "R15" / "images")
    rec = next(r for r in parser.parse(SingleSplitSplitter())[0] if r.filepath.name == name)
    img = load_image(rec.filepath)
    assert img.shape == (rec.height, rec.width, 3) and img.dtype == np.uint8
    x1, y1, x2, y2 = rec.boxes[0].astype(int)
    inside = np.zeros(img.shape[:2], bool)
    inside[y1:y2, x1:x2] = True
    grey = img.astype(float).mean(-1) if name == "gray16.png" else img[..., 0].astype(float) - img[..., 1:].mean(-1)
    assert abs(grey[inside].mean() - grey[~inside].mean()) > 100


def test_r15_16bit_grey_is_scaled_not_clipped():
    img = load_image(CASES / "R15" / "images" / "gray16.png")
    assert sorted(np.unique(img[..., 0]).tolist()) == [round(3000 * 255 / 65535), round(60000 * 255 / 65535)]


def test_r15_cmyk_red_becomes_rgb_red():
    img = load_image(CASES / "R15" / "images" / "cmyk.jpg")
    r, g, b = img[20, 30].astype(int)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("orientation, shape", [(1, (40, 60)), (3, (40, 60)), (6, (60, 40)), (8, (60, 40))])
def test_exif_orientation_is_applied_and_sizes_agree(tmp_path, orientation, shape):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :10] = 255  # a white mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.shape[:2] == shape == image_size(path) == check_image(path)
    corners = {"tl": img[:5, :5], "tr": img[:5, -5:], "bl": img[-5:, :5], "br": img[-5:, -5:]}
    bright = max(corners, key=lambda k: corners[k].mean())
    assert bright == {1: "tl", 3: "br", 6: "tr", 8: "bl"}[orientation]


def test_unreadable_and_missing_images_name_the_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        load_image(bad)
    with pytest.raises(DataError, match="image not found: .*nope.png"):
        load_image(tmp_path / "nope.png")


def test_n09_truncated_jpeg_passes_the_header_read_but_not_the_full_decode_check():
    truncated = CASES / "N09" / "images" / "img2.jpg"
    assert image_size(truncated) == (96, 128)  # the header alone looks fine
    with pytest.raises(DataError, match=r"img2\.jpg \(4642 bytes\).*truncated"):
        check_image(truncated)
    with pytest.raises(DataError, match=r"img2\.jpg \(4642 bytes\).*truncated"):
        load_image(truncated)
    assert check_image(CASES / "N09" / "images" / "img0.jpg") == (96, 128)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_check_image_turns_every_undecodable_file_into_a_data_error(tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=rf"bad\.png \({len(content)} bytes\)"):
        check_image(bad)
    with pytest.raises(DataError, match="image not found: .*nope.png"):
        check_image(tmp_path / "nope.png")
