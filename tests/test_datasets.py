"""open_dataset / find_layout: VOC and COCO folders, published / random / file splits, and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import DATA
from fpn_lab.data.datasets import find_layout, open_dataset
from fpn_lab.errors import DataError

TRAIN, VALID = ("10", "11", "12", "13"), ("14", "15")  # VALID holds the crowd box (14) and the negative (15)
NAMES, IDS = ["carton", "can", "milk_bottle", "water_bottle"], [0, 3, 7, 12]


def _load(coco_dir: Path) -> dict:
    return json.loads((coco_dir / "annotations.json").read_text())


def _subset(data: dict, stems, renumber: bool = True) -> dict:
    """The images of ``stems`` and their annotations; ``renumber``: int image ids from 1 (so two
    files made this way reuse the same ids, as separately exported COCO files do)."""
    images = [im for im in data["images"] if Path(im["file_name"]).stem in stems]
    new_id = {im["id"]: (k + 1 if renumber else im["id"]) for k, im in enumerate(images)}
    anns = [{**a, "image_id": new_id[a["image_id"]]} for a in data["annotations"] if a["image_id"] in new_id]
    return {"images": [{**im, "id": new_id[im["id"]]} for im in images], "annotations": anns,
            "categories": data["categories"]}


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco_two_files(coco_fridge, tmp_path):
    """``annotations/train.json`` (10-13.jpg) + ``annotations/val.json`` (14, 15.jpg), both with ids 1.. ."""
    data = _load(coco_fridge)
    _write(tmp_path / "annotations" / "train.json", _subset(data, TRAIN))
    _write(tmp_path / "annotations" / "val.json", _subset(data, VALID))
    (tmp_path / "images").symlink_to(coco_fridge / "images", target_is_directory=True)
    return tmp_path


def test_voc_layouts_are_detected_and_published_split_is_imagesets(bccd_records):
    layout = find_layout(DATA / "bccd")
    assert layout.data_format == "voc" and layout.images == DATA / "bccd" / "images"
    assert layout.sources["valid"] == DATA / "bccd" / "ImageSets" / "Main" / "test.txt"
    data = open_dataset(DATA / "bccd")
    _, train, test = bccd_records  # the notebook's former parse cell
    assert [r.filepath for r in data.train] == [r.filepath for r in train]
    assert [r.filepath for r in data.valid] == [r.filepath for r in test]
    assert data.class_map.names == ["Platelets", "RBC", "WBC"] and data.report.dropped == {"zero-area": 2}
    assert data.as_dict()["split"] == {"name": "published", "train": 292, "valid": 72}
    assert find_layout(DATA / "fridge", split="random").data_format == "voc"


def test_voc_random_split_is_the_same_for_the_same_seed():
    a, b = (open_dataset(DATA / "fridge", split="random", seed=3) for _ in range(2))
    assert [r.filepath for r in a.valid] == [r.filepath for r in b.valid]
    assert (len(a.train), len(a.valid), a.seed) == (5, 1, 3) and "seed 3" in str(a)


def test_voc_without_imagesets_has_no_published_split():
    with pytest.raises(DataError, match=r"no published split.*split='random'.*split='file'"):
        open_dataset(DATA / "fridge")


def test_voc_file_split_reads_image_ids(tmp_path):
    ids = tmp_path / "valid_ids.txt"
    ids.write_text("14\n15  # the last two\n\n14\n")
    data = open_dataset(DATA / "fridge", split="file", valid_annotations=ids)
    assert sorted(r.filepath.stem for r in data.valid) == ["14", "15"]
    assert sorted(r.filepath.stem for r in data.train) == ["10", "11", "12", "13"]
    assert data.sources["valid"] == ids and data.seed is None
    ids.write_text("14\n99\n")
    with pytest.raises(DataError, match=r"ids of 'valid_ids.txt' name no parsed image.*99"):
        open_dataset(DATA / "fridge", split="file", valid_annotations=ids)
    with pytest.raises(DataError, match="is a json file, but .* is a VOC dataset"):
        open_dataset(DATA / "fridge", split="file", valid_annotations=_write(tmp_path / "v.json", {}))


def test_coco_single_file_random_split(coco_fridge):
    layout = find_layout(coco_fridge, split="random")
    assert layout.data_format == "coco" and layout.sources == {"annotations": coco_fridge / "annotations.json"}
    data = open_dataset(coco_fridge, split="random", seed=42)
    assert data.class_map.names == NAMES and data.class_map.category_ids == IDS
    assert (len(data.train), len(data.valid)) == (5, 1) and data.valid[0].image_id == "fridge-10"
    assert data.report.negatives == 1 and data.report.crowd == 1 and data.report.boxes == 10
    again = open_dataset(coco_fridge, split="random", seed=42)
    assert [r.image_id for r in again.train] == [r.image_id for r in data.train]
    info = data.as_dict()
    assert info["format"] == "coco" and info["category_ids"] == IDS and info["sources"] == {"annotations": "annotations.json"}
    assert info["parse"]["images"] == 6 and "parse_by_source" not in info


def test_coco_single_file_has_no_published_split(coco_fridge):
    with pytest.raises(DataError, match=r"annotations.json \(the whole set\): no published split.*split='random' or "
                                        r"split='file' with valid_annotations"):
        open_dataset(coco_fridge)


def test_coco_train_and_val_files_give_the_published_split_with_one_class_map(coco_two_files):
    data = open_dataset(coco_two_files)
    assert data.sources == {"train": coco_two_files / "annotations" / "train.json",
                            "valid": coco_two_files / "annotations" / "val.json"}
    assert data.class_map.names == NAMES and data.class_map.category_ids == IDS
    assert [r.filepath.stem for r in data.valid] == ["14", "15"] and [r.image_id for r in data.valid] == [1, 2]
    assert [r.image_id for r in data.train] == [1, 2, 3, 4]  # ids reused across files: only valid's must be unique
    val = json.loads((coco_two_files / "annotations" / "val.json").read_text())
    cat_name = {c["id"]: c["name"] for c in val["categories"]}
    first = [a for a in val["annotations"] if a["image_id"] == 1]
    assert [data.class_map.name(int(x)) for x in data.valid[0].labels] == [cat_name[a["category_id"]] for a in first]
    assert data.valid[0].iscrowd.tolist() == [True, False] and data.valid[1].num_boxes == 0
    info = data.as_dict()
    assert set(info["parse_by_source"]) == {"train", "valid"} and info["parse"]["images"] == 6
    assert info["parse"]["crowd"] == 1 and info["parse"]["negatives"] == 1


def test_coco_2017_layout_reads_images_from_split_folders(coco_fridge, tmp_path):
    data = _load(coco_fridge)
    for name, stems in (("train2017", TRAIN), ("val2017", VALID)):
        _write(tmp_path / "annotations" / f"instances_{name}.json", _subset(data, stems))
        (tmp_path / name).mkdir()
        for stem in stems:
            shutil.copy(coco_fridge / "images" / f"{stem}.jpg", tmp_path / name)
    ds = open_dataset(tmp_path)
    assert ds.data_format == "coco" and ds.valid[0].filepath == tmp_path / "val2017" / "14.jpg"
    assert ds.train[0].filepath == tmp_path / "train2017" / "10.jpg"


def test_coco_file_split_and_file_names_pointing_elsewhere(coco_fridge, tmp_path):
    data = _load(coco_fridge)
    _write(tmp_path / "set" / "annotations.json", _subset(data, TRAIN, renumber=False))
    (tmp_path / "set" / "images").symlink_to(coco_fridge / "images", target_is_directory=True)
    held_out = _subset(data, VALID, renumber=False)
    for im in held_out["images"]:  # the validation images live elsewhere: absolute file_name paths
        im["file_name"] = str(coco_fridge / "images" / im["file_name"])
    valid_json = _write(tmp_path / "held_out.json", held_out)
    ds = open_dataset(tmp_path / "set", split="file", valid_annotations=valid_json)
    assert [r.image_id for r in ds.valid] == ["fridge-14", "fridge-15"] and len(ds.train) == 4
    assert ds.class_map.category_ids == IDS and ds.sources["valid"] == valid_json
    with pytest.raises(DataError, match="is not a .json file, but .* is a COCO dataset"):
        open_dataset(tmp_path / "set", split="file", valid_annotations=_write(tmp_path / "ids.txt", {}))
    with pytest.raises(DataError, match="is the training file itself"):
        open_dataset(tmp_path / "set", split="file", valid_annotations=tmp_path / "set" / "annotations.json")


def test_coco_files_whose_categories_differ_are_refused(coco_two_files):
    val_path = coco_two_files / "annotations" / "val.json"
    val = json.loads(val_path.read_text())
    val["categories"] = [{**c, "id": 4} if c["name"] == "can" else c for c in val["categories"]
                         if c["name"] != "water_bottle"]
    val["annotations"] = [{**a, "category_id": 4} if a["category_id"] == 3 else a for a in val["annotations"]]
    _write(val_path, val)
    with pytest.raises(DataError, match=r"missing \['water_bottle'\]; 'can' has id 4 there but 3 in training.*same ids"):
        open_dataset(coco_two_files)


def test_an_image_in_both_coco_files_is_refused(coco_two_files):
    data = _subset(json.loads((coco_two_files / "annotations" / "train.json").read_text()), ("10", "14"))
    _write(coco_two_files / "annotations" / "val.json", data)
    with pytest.raises(DataError, match=r"1 images are both in train.json and in val.json.*10.jpg"):
        open_dataset(coco_two_files)


def test_duplicate_image_ids_in_the_validation_file_are_refused(coco_two_files):
    val_path = coco_two_files / "annotations" / "val.json"
    val = json.loads(val_path.read_text())
    val["images"][1]["id"] = val["images"][0]["id"]
    _write(val_path, val)
    with pytest.raises(DataError, match=r"val.json: images #0 \('14.jpg'\) and #1 \('15.jpg'\) have the same id 1"):
        open_dataset(coco_two_files)


def test_a_random_split_with_an_empty_side_is_refused(coco_fridge, tmp_path):
    _write(tmp_path / "annotations.json", _subset(_load(coco_fridge), ("10",)))
    (tmp_path / "images").symlink_to(coco_fridge / "images", target_is_directory=True)
    with pytest.raises(DataError, match="validation split .* is empty"):
        open_dataset(tmp_path, split="random")


def _touch(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("files, kwargs, match", [
    (["annotations/a.xml", "images/", "annotations.json"], {}, r"both Pascal VOC annotations \(annotations/\*.xml\) "
     r"and COCO files \['annotations.json'\].*set data_format"),
    (["notes.json", "pics/"], {}, r"neither VOC nor COCO.*holds: notes.json, pics/.*not recognised: \['notes.json'\]"
     r".*rename.*Expected layouts"),
    (["images/"], {"data_format": "coco"}, r"no recognised COCO json file.*Expected layouts"),
    (["annotations.json"], {"data_format": "voc"}, r"no annotations/ folder with \*.xml"),
    (["train.json", "annotations/instances_train2017.json"], {}, r"2 training .* files.*keep one"),
    (["annotations.json", "annotations/train.json"], {}, r"both annotations.json and annotations/train.json.*ambiguous"),
    (["val.json"], {}, r"found the validation file val.json but no training file"),
    (["train.json"], {}, r"train.json with no validation file: no published split"),
    (["annotations.json", "val.json"], {}, r"whole set.*split='file' with valid_annotations='.*val.json'"),
    (["annotations/a.xml"], {"split": "random"}, r"no images/ \(or JPEGImages/\) folder"),
    ([], {"data_format": "yolo"}, "data_format: 'yolo' is not one of"),
    ([], {"split": "test"}, r"split: 'test' is not one of \['published', 'random', 'file'\]"),
    ([], {"split": "file"}, "split: 'file' needs valid_annotations"),
    ([], {"split": "random", "valid_annotations": "v.json"}, r"only read with split 'file' \(split is 'random'\)"),
    ([], {"split": "file", "valid_annotations": "/nope/v.json"}, "valid_annotations /nope/v.json is not a file"),
])
def test_layout_errors_say_what_was_found_and_how_to_fix_it(tmp_path, files, kwargs, match):
    for name in files:
        (tmp_path / name).mkdir(parents=True) if name.endswith("/") else _touch(tmp_path / name)
    with pytest.raises(DataError, match=match):
        find_layout(tmp_path, **kwargs)


def test_data_format_settles_an_ambiguous_folder(tmp_path):
    for name in ("annotations/a.xml", "annotations.json"):
        _touch(tmp_path / name)
    (tmp_path / "images").mkdir()
    assert find_layout(tmp_path, data_format="voc", split="random").data_format == "voc"
    assert find_layout(tmp_path, data_format="coco", split="random").data_format == "coco"
    assert find_layout(tmp_path, data_format="coco", split="random").images == tmp_path / "images"


def test_coco_file_split_takes_the_validation_images_out_of_the_whole_set(coco_fridge, tmp_path):
    """The common export: one annotations.json with every image, and a json of the validation images."""
    valid_json = _write(tmp_path / "val.json", _subset(_load(coco_fridge), ("10", "13"), renumber=False))
    data = open_dataset(coco_fridge, split="file", valid_annotations=valid_json)
    assert sorted(r.filepath.stem for r in data.valid) == ["10", "13"]
    assert sorted(r.filepath.stem for r in data.train) == ["11", "12", "14", "15"]
    assert [r.image_id for r in data.valid] == ["fridge-10", "fridge-13"]


def test_a_training_split_without_any_box_is_refused(coco_fridge, tmp_path):
    data = _load(coco_fridge)
    _write(tmp_path / "annotations.json", {**data, "annotations": []})
    (tmp_path / "images").symlink_to(coco_fridge / "images", target_is_directory=True)
    with pytest.raises(DataError, match=r"training split .* \(5 images\) has no box to train on"):
        open_dataset(tmp_path, split="random")


def test_a_file_found_but_not_used_is_a_note_in_the_summary_not_a_warning(coco_two_files, caplog):
    """'val.json is not used' printed twice in the notebook: in the summary and as a red stderr warning."""
    import logging

    with caplog.at_level(logging.WARNING):
        data = open_dataset(coco_two_files, split="random")
    assert "note: annotations/val.json is not used: split='random' splits annotations/train.json" in data.summary()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
