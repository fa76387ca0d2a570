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
