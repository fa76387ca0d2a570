"""Property-based: mutated VOC XML and COCO JSON either parse to valid records or raise DataError."""

from __future__ import annotations

import json
import math
from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fpn_lab.data.parsers import COCOBBoxParser, VOCBBoxParser
from fpn_lab.data.splits import SingleSplitSplitter
from fpn_lab.errors import DataError

W, H = 64, 48
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers = st.one_of(st.integers(-100, 200), st.floats(-100, 200), st.sampled_from([math.nan, math.inf, -math.inf]),
                    st.sampled_from(["nan", "inf", "-0", "1e2"]))
coord_text = st.one_of(numbers.map(str), st.sampled_from(["", "abc", "10px", " 12 "]))
names = st.sampled_from(["cat", "dog", " cat ", "Cat", "dog ", "", "  ", "ca t"])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    Image.new("RGB", (W, H), (10, 20, 30)).save(d / "a.png")
    return d


def check(records):
    for r in records:
        assert (r.height, r.width) == (H, W)
        assert r.boxes.dtype == np.float32 and r.boxes.shape == (len(r.labels), 4)
        b = r.boxes
        assert np.isfinite(b).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, [0, 1]] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()


def voc_object(name, coords, drop_tag):
    tags = "".join(f"<{t}>{escape(c)}</{t}>" for t, c in zip(("xmin", "ymin", "xmax", "ymax"), coords) if t != drop_tag)
    name_xml = "" if drop_tag == "name" else f"<name>{escape(name)}</name>"
    box = "" if drop_tag == "bndbox" else f"<bndbox>{tags}</bndbox>"
    return f"<object>{name_xml}<difficult>{int(drop_tag == 'x')}</difficult>{box}</object>"


@SETTINGS
@given(objects=st.lists(st.tuples(names, st.lists(coord_text, min_size=4, max_size=4),
                                  st.sampled_from([None, "xmin", "ymax", "name", "bndbox", "x"])), max_size=5),
       size=st.sampled_from(["<size><width>64</width><height>48</height></size>", "", "<size><width>7</width></size>"]),
       broken=st.booleans())
def test_voc_mutations(images, tmp_path_factory, objects, size, broken):
    d = tmp_path_factory.mktemp("voc")
    body = "".join(voc_object(n, c, t) for n, c, t in objects)
    xml = f"<annotation><filename>a.png</filename>{size}{body}</annotation>"
    (d / "a.xml").write_text(xml[:-5] if broken else xml)
    try:
        check(VOCBBoxParser(d, images).parse(SingleSplitSplitter())[0])
    except DataError:
        pass


bbox_values = st.one_of(st.lists(numbers.filter(lambda v: not isinstance(v, str)), min_size=4, max_size=4),
                        st.lists(st.integers(0, 60), min_size=0, max_size=6), st.none(), st.just("10,10,5,5"),
                        st.lists(st.one_of(st.none(), st.text(max_size=2)), min_size=4, max_size=4))


@SETTINGS
@given(anns=st.lists(st.fixed_dictionaries({"bbox": bbox_values}, optional={
           "category_id": st.sampled_from([1, 7, 99, "1", None]), "iscrowd": st.sampled_from([0, 1, True]),
           "image_id": st.sampled_from([1, "1", 2]),
           "segmentation": st.sampled_from([[[1, 1, 20, 1, 20, 20]], [], [[1, 2]], {"counts": "x"}])}), max_size=5),
       cats=st.sampled_from([[{"id": 1, "name": "a"}, {"id": 7, "name": "b"}], [{"id": 1, "name": "a"}, {"id": 2}],
                             [{"id": 1, "name": "a"}, {"id": 2, "name": "A"}], []]),
       image_id=st.sampled_from([1, "img-1"]))
def test_coco_mutations(images, tmp_path_factory, anns, cats, image_id):
    d = tmp_path_factory.mktemp("coco")
    for k, a in enumerate(anns):
        a.setdefault("image_id", image_id)
        a.setdefault("category_id", 1)
        a["id"] = k + 1
        if a["bbox"] is None:
            del a["bbox"]
    data = {"images": [{"id": image_id, "file_name": "a.png", "width": W, "height": H}], "annotations": anns,
            "categories": cats}
    (d / "a.json").write_text(json.dumps(data, allow_nan=True))
    try:
        check(COCOBBoxParser(d / "a.json", images).parse(SingleSplitSplitter())[0])
    except DataError:
        pass


# The mutation tests above accept a DataError for any input, so a parser that refused everything
# would pass them; well-formed inputs must parse, box for box.
valid_boxes = st.lists(st.tuples(st.sampled_from(["cat", "dog"]), st.floats(0, W - 2), st.floats(0, H - 2),
                                 st.floats(1, W), st.floats(1, H)), min_size=0, max_size=5)


def _inside(x0, y0, x1, y1):
    """A box with x0 < x1 <= W and y0 < y1 <= H from four numbers."""
    x1, y1 = min(W, max(x1, x0 + 1)), min(H, max(y1, y0 + 1))
    return round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)


@SETTINGS
@given(boxes=valid_boxes)
def test_well_formed_voc_parses_box_for_box(images, tmp_path_factory, boxes):
    d = tmp_path_factory.mktemp("vocok")
    objs = [(n, _inside(*c)) for n, *c in boxes]
    body = "".join(voc_object(n, [str(v) for v in c], None) for n, c in objs)
    (d / "a.xml").write_text(f"<annotation><filename>a.png</filename><size><width>{W}</width><height>{H}</height>"
                             f"</size>{body}</annotation>")
    parser = VOCBBoxParser(d, images, class_map=["cat", "dog"])
    (records,) = parser.parse(SingleSplitSplitter())
    check(records)
    (r,) = records
    np.testing.assert_allclose(r.boxes, np.array([c for _, c in objs], np.float32).reshape(-1, 4), atol=1e-4)
    assert r.labels.tolist() == [["cat", "dog"].index(n) for n, _ in objs]


@SETTINGS
@given(boxes=valid_boxes, image_id=st.sampled_from([0, 1, "img-1"]))
def test_well_formed_coco_parses_box_for_box(images, tmp_path_factory, boxes, image_id):
    d = tmp_path_factory.mktemp("cocook")
    objs = [(n, _inside(*c)) for n, *c in boxes]
    anns = [{"id": k + 1, "image_id": image_id, "category_id": {"cat": 3, "dog": 0}[n],
             "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0} for k, (n, (x0, y0, x1, y1)) in enumerate(objs)]
    data = {"images": [{"id": image_id, "file_name": "a.png", "width": W, "height": H}], "annotations": anns,
            "categories": [{"id": 3, "name": "cat"}, {"id": 0, "name": "dog"}]}
    (d / "a.json").write_text(json.dumps(data))
    parser = COCOBBoxParser(d / "a.json", images)
    (records,) = parser.parse(SingleSplitSplitter())
    check(records)
    (r,) = records
    assert r.image_id == image_id
    np.testing.assert_allclose(r.boxes, np.array([c for _, c in objs], np.float32).reshape(-1, 4), atol=1e-3)
    names = parser.class_map.names
    assert [names[k] for k in r.labels] == [n for n, _ in objs]
