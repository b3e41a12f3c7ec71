"""VOC, COCO, classification and image-list datasets: order, parsing, and bad-input handling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.data import (
    ClassFolderDataset,
    ClassListDataset,
    COCODataset,
    ImageListDataset,
    VOCDataset,
)
from harness.data.boxes import denormalize_xyxy, normalize_xyxy, voc_to_xyxy, xywh_to_xyxy, xyxy_to_voc, xyxy_to_xywh
from harness.errors import AnnotationError, DataError, ImageReadError


def _png(path: Path, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", np.zeros((size[1], size[0], 3), np.uint8))[1].tobytes())
    return path


# --- VOC --------------------------------------------------------------------------------------------
def _obj(name="dog", box=(1, 1, 10, 10), difficult="0", truncated="0", extra=""):
    fields = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return f"<object><name>{name}</name>{diff}<truncated>{truncated}</truncated><bndbox>{fields}</bndbox>{extra}</object>"


def _xml(objects, width=100, height=50):
    return f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{''.join(objects)}</annotation>"


def _voc(tmp_path: Path, annotations: dict[str, str], split: list[str] | None = None, images=None) -> Path:
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        if images is None or image_id in images:
            (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"jpeg")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(split or list(annotations)) + "\n")
    return root


def test_voc_parses_boxes_labels_difficult_in_split_order(tmp_path):
    root = _voc(
        tmp_path,
        {
            "000002": _xml([_obj("person", (1, 1, 100, 50), difficult="1", truncated="1"), _obj("cat", (5, 6, 7, 8))]),
            "000001": _xml([_obj("dog", (2, 3, 4, 5), difficult=None)]),
        },
        split=["000002 1", "000001 -1"],
    )
    ds = VOCDataset(root, split="test")
    assert [s.image_id for s in ds] == ["000002", "000001"]
    assert ds.class_names == ("cat", "dog", "person")  # discovered, sorted
    first = ds[0].target
    assert first.boxes.dtype == np.float64 and first.boxes.tolist() == [[1, 1, 100, 50], [5, 6, 7, 8]]
    assert first.labels.tolist() == [2, 0] and first.difficult.tolist() == [True, False]
    assert first.truncated.tolist() == [True, False]
    assert first.image_size == (100, 50) and first.box_convention == "voc"
    assert ds[1].target.difficult.tolist() == [False]  # missing <difficult> reads as 0
    assert ds[0].image_path == root / "JPEGImages" / "000002.jpg"


def test_voc_given_classes_fix_labels_and_unknown_class_is_an_error(tmp_path):
    root = _voc(tmp_path, {"a": _xml([_obj("dog"), _obj("cat")])})
    ds = VOCDataset(root, classes=["dog", "cat"])
    assert ds[0].target.labels.tolist() == [0, 1]
    with pytest.raises(AnnotationError, match="'cat'"):
        VOCDataset(root, classes=["dog"])
    kept = VOCDataset(root, classes=["dog"], ignore_unknown_classes=True)
    assert kept[0].target.labels.tolist() == [0]


def test_voc_border_boxes_within_the_one_based_convention_are_fine(tmp_path):
    root = _voc(tmp_path, {"a": _xml([_obj(box=(1, 1, 100, 50)), _obj(box=(100, 50, 100, 50))])})
    assert len(VOCDataset(root)[0].target) == 2


@pytest.mark.parametrize(
    "xml, fragments",
    [
        (_xml([_obj(box=(0, 1, 10, 10))]), ["a.xml", "bndbox", "outside"]),
        (_xml([_obj(box=(1, 1, 101, 10))]), ["a.xml", "bndbox", "outside"]),
        (_xml([_obj(box=(10, 1, 5, 10))]), ["a.xml", "bndbox", "negative size"]),
        (_xml([_obj().replace("<xmax>10</xmax>", "")]), ["a.xml", "bndbox/xmax"]),
        (_xml([_obj().replace("<name>dog</name>", "")]), ["a.xml", "name"]),
        (_xml([_obj().replace("<xmin>1</xmin>", "<xmin>one</xmin>")]), ["a.xml", "bndbox/xmin"]),
        (_xml([_obj(difficult="yes")]), ["a.xml", "difficult"]),
        (_xml([]).replace("<width>100</width>", ""), ["a.xml", "size/width"]),
        ("<annotation><size>", ["a.xml", "not well-formed"]),
    ],
)
def test_voc_bad_annotations_name_file_and_field(tmp_path, xml, fragments):
    root = _voc(tmp_path, {"a": xml})
    with pytest.raises(AnnotationError) as info:
        VOCDataset(root)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_voc_missing_image_and_missing_xml(tmp_path):
    root = _voc(tmp_path, {"a": _xml([_obj()])}, images=[])
    with pytest.raises(ImageReadError, match="a.jpg"):
        VOCDataset(root)
    root2 = _voc(tmp_path / "x", {"a": _xml([_obj()])}, split=["a", "ghost"])
    with pytest.raises(AnnotationError, match="ghost.xml"):
        VOCDataset(root2)


def test_voc_skip_bad_counts_logs_and_skips(tmp_path, caplog):
    root = _voc(
        tmp_path,
        {"good": _xml([_obj()]), "bad_box": _xml([_obj(box=(1, 1, 500, 10))]), "bad_xml": "<oops", "no_image": _xml([_obj()])},
        images=["good", "bad_box", "bad_xml"],
    )
    with caplog.at_level(logging.WARNING):
        ds = VOCDataset(root, skip_bad=True)
    assert [s.image_id for s in ds] == ["good"]
    assert ds.num_skipped == 3 and len(ds.skipped) == 3
    assert sum("skipping a bad sample" in r.message for r in caplog.records) == 3
    assert any("bad_box.xml" in m for m in ds.skipped)


def test_voc_layout_and_split_errors(tmp_path):
    with pytest.raises(DataError, match="Annotations"):
        VOCDataset(tmp_path)
    root = _voc(tmp_path, {"a": _xml([_obj()])})
    with pytest.raises(DataError, match="trainval.txt"):
        VOCDataset(root, split="trainval")
    assert len(VOCDataset(root, split=None)) == 1


# --- COCO -------------------------------------------------------------------------------------------
def _coco(tmp_path: Path, annotations: list[dict], images=None, categories=None) -> Path:
    images = images or [
        {"id": 7, "file_name": "b.jpg", "width": 100, "height": 50},
        {"id": 3, "file_name": "a.jpg", "width": 100, "height": 50},
    ]
    for im in images:
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / im["file_name"]).write_bytes(b"x")
    data = {
        "images": images,
        "annotations": annotations,
        "categories": categories or [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_orders_by_image_id_and_maps_categories(tmp_path):
    path = _coco(
        tmp_path,
        [
            {"id": 1, "image_id": 7, "bbox": [10, 5, 20, 10], "category_id": 18, "iscrowd": 1},
            {"id": 2, "image_id": 7, "bbox": [0, 0, 100, 50], "category_id": 1},
        ],
    )
    ds = COCODataset(path, tmp_path / "img")
    assert [s.image_id for s in ds] == ["3", "7"]
    assert ds.class_names == ("person", "dog") and ds.category_ids == (1, 18)
    assert len(ds[0].target) == 0  # image without annotations is kept
    target = ds[1].target
    assert target.boxes.tolist() == [[10, 5, 30, 15], [0, 0, 100, 50]]
    assert target.labels.tolist() == [1, 0] and target.crowd.tolist() == [True, False]
    assert target.box_convention == "xyxy"


@pytest.mark.parametrize(
    "ann, fragment",
    [
        ({"id": 1, "image_id": 7, "bbox": [10, 5, -1, 10], "category_id": 1}, "negative size"),
        ({"id": 1, "image_id": 7, "bbox": [90, 5, 20, 10], "category_id": 1}, "outside"),
        ({"id": 1, "image_id": 7, "bbox": [1, 2, 3], "category_id": 1}, "bbox"),
        ({"id": 1, "image_id": 7, "category_id": 1}, "bbox"),
        ({"id": 1, "image_id": 7, "bbox": [1, 2, 3, 4], "category_id": 99}, "category_id"),
    ],
)
def test_coco_bad_annotations(tmp_path, ann, fragment):
    path = _coco(tmp_path, [ann])
    with pytest.raises(AnnotationError, match=fragment):
        COCODataset(path, tmp_path / "img")
    ds = COCODataset(path, tmp_path / "img", skip_bad=True)
    assert ds.num_skipped == 1 and [s.image_id for s in ds] == ["3"]


def test_coco_missing_image_and_bad_json(tmp_path):
    path = _coco(tmp_path, [])
    (tmp_path / "img" / "a.jpg").unlink()
    with pytest.raises(ImageReadError, match="a.jpg"):
        COCODataset(path, tmp_path / "img")
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="instances.json"):
        COCODataset(path, tmp_path / "img")


# --- classification ---------------------------------------------------------------------------------
def test_class_folder_sorted_classes_and_files(tmp_path):
    for rel in ["zebra/2.png", "zebra/1.jpg", "ant/b.png", "ant/a.png", "ant/notes.txt"]:
        _png(tmp_path / rel)
    ds = ClassFolderDataset(tmp_path)
    assert ds.class_names == ("ant", "zebra")
    assert [(s.image_id, s.target) for s in ds] == [("ant/a.png", 0), ("ant/b.png", 0), ("zebra/1.jpg", 1), ("zebra/2.png", 1)]
    assert ds[0].read().shape == (6, 8, 3)


def test_class_list_resolves_relative_paths_and_validates_lines(tmp_path):
    _png(tmp_path / "imgs" / "with space.png")
    _png(tmp_path / "imgs" / "b.png")
    lst = tmp_path / "val.txt"
    lst.write_text("# comment\nimgs/with space.png 3\n\nimgs/b.png 0\n")
    ds = ClassListDataset(lst)
    assert [(s.image_id, s.target) for s in ds] == [("imgs/with space.png", 3), ("imgs/b.png", 0)]
    assert ds.class_names == ("0", "1", "2", "3")
    with pytest.raises(AnnotationError, match="out of range"):
        ClassListDataset(lst, classes=["a", "b"])
    lst.write_text("imgs/b.png\n")
    with pytest.raises(AnnotationError, match="line 1"):
        ClassListDataset(lst)
    lst.write_text("imgs/missing.png 1\nimgs/b.png 0\n")
    with pytest.raises(ImageReadError, match="missing.png"):
        ClassListDataset(lst)
    assert ClassListDataset(lst, skip_bad=True).num_skipped == 1


# --- calibration image lists ------------------------------------------------------------------------
def test_image_list_file_resolves_against_its_folder(tmp_path, monkeypatch):
    _png(tmp_path / "data" / "x" / "1.png")
    _png(tmp_path / "data" / "2.png")
    lst = tmp_path / "data" / "imageList.txt"
    lst.write_text("x/1.png\n\n2.png\n")
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    ds = ImageListDataset(lst)
    assert [s.image_path for s in ds] == [tmp_path / "data" / "x" / "1.png", tmp_path / "data" / "2.png"]
    assert ds[0].target is None


def test_image_list_expands_braced_environment_variables(tmp_path, monkeypatch):
    """``${NAME}`` lines point at data outside the project (the real models); ``$`` alone stays literal."""
    _png(tmp_path / "far" / "1.png")
    _png(tmp_path / "near" / "$2.png")
    lst = tmp_path / "near" / "list.txt"
    lst.write_text("${QH_FAR}/1.png\n$2.png\n")
    monkeypatch.setenv("QH_FAR", str(tmp_path / "far"))
    assert [s.image_path for s in ImageListDataset(lst)] == [tmp_path / "far" / "1.png", tmp_path / "near" / "$2.png"]
    monkeypatch.delenv("QH_FAR")
    with pytest.raises(DataError, match=r"list.txt line 1 uses the environment variable QH_FAR, which is not set"):
        ImageListDataset(lst)


def test_image_list_folder_sorted_filtered_and_limited(tmp_path):
    for name in ["b.png", "a.jpg", "c.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [s.image_id for s in ImageListDataset(tmp_path)] == ["a.jpg", "b.png"]
    assert [s.image_id for s in ImageListDataset(tmp_path, extensions=(".png",))] == ["b.png"]
    assert len(ImageListDataset(tmp_path, limit=1)) == 1
    with pytest.raises(DataError, match="no images"):
        ImageListDataset(tmp_path, extensions=(".webp",))


def test_image_list_missing_entries(tmp_path):
    _png(tmp_path / "ok.png")
    lst = tmp_path / "list.txt"
    lst.write_text("ok.png\ngone.png\n")
    with pytest.raises(ImageReadError, match="line 2"):
        ImageListDataset(lst)
    ds = ImageListDataset(lst, skip_bad=True)
    assert len(ds) == 1 and ds.num_skipped == 1
    with pytest.raises(DataError, match="does not exist"):
        ImageListDataset(tmp_path / "nothing.txt")


# --- box conventions --------------------------------------------------------------------------------
def test_box_convention_helpers_are_inverse_and_match_the_documented_meaning():
    voc = np.array([[1.0, 1.0, 100.0, 50.0]])  # the whole 100x50 image in VOC terms
    assert voc_to_xyxy(voc).tolist() == [[0, 0, 100, 50]]
    np.testing.assert_array_equal(xyxy_to_voc(voc_to_xyxy(voc)), voc)
    xywh = np.array([[10.0, 5.0, 20.0, 10.0]])
    np.testing.assert_array_equal(xyxy_to_xywh(xywh_to_xyxy(xywh)), xywh)
    np.testing.assert_allclose(normalize_xyxy(voc_to_xyxy(voc), (100, 50)), [[0, 0, 1, 1]])
    np.testing.assert_allclose(denormalize_xyxy([[0, 0, 1, 1]], (100, 50)), [[0, 0, 100, 50]])
