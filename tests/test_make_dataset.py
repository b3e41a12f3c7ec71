"""Tests for tools/make_dataset.py, the synthetic VOC + class-folder dataset generator.

The committed evaluation data (suites/assets/) is regenerated from this tool, so what matters is that
a rerun is byte-identical, splits never leak into each other, and the annotations follow the VOC devkit
conventions the metrics code assumes (1-based inclusive boxes, truncated/difficult flags).
"""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

TOOLS_DIR = Path(__file__).resolve().parents[1] / "tools"
DET_COUNTS = {"train": 6, "val": 3, "test": 4, "calib": 3}
CLS_COUNTS = {"train": 26, "val": 13, "test": 13, "calib": 12}


def _load_tool() -> ModuleType:
    """Import the script by path: tools/ is not a package and must not need installing."""
    spec = importlib.util.spec_from_file_location("make_dataset", TOOLS_DIR / "make_dataset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


md = _load_tool()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_ids(voc: Path, split: str) -> list[str]:
    return (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def det_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return md.make_detection_set(tmp_path_factory.mktemp("det"), seed=7, counts=DET_COUNTS)


@pytest.fixture(scope="module")
def cls_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return md.make_classification_set(tmp_path_factory.mktemp("cls"), seed=7, counts=CLS_COUNTS)


@pytest.fixture(scope="module")
def sample_objects() -> list[tuple[tuple[int, int], list]]:
    """A moderately sized in-memory sample (no files) for the statistical checks."""
    out = []
    for index in range(80):
        img, objects = md.render_detection_image(md._rng(0, md._SET_DET, "train", index))
        out.append((img.shape[:2], objects))
    return out


# ----------------------------------------------------------------------------------- determinism


def test_detection_rerun_is_byte_identical(det_set: Path, tmp_path: Path) -> None:
    again = md.make_detection_set(tmp_path, seed=7, counts=DET_COUNTS)
    assert _tree_bytes(again) == _tree_bytes(det_set)


def test_classification_rerun_is_byte_identical(cls_set: Path, tmp_path: Path) -> None:
    again = md.make_classification_set(tmp_path, seed=7, counts=CLS_COUNTS)
    assert _tree_bytes(again) == _tree_bytes(cls_set)


def test_other_seed_gives_other_images(det_set: Path, tmp_path: Path) -> None:
    other = md.make_detection_set(tmp_path, seed=8, counts=DET_COUNTS)
    name = "JPEGImages/300000.jpg"
    assert (other / name).read_bytes() != (det_set / name).read_bytes()


def test_test_split_does_not_depend_on_train_count(det_set: Path, tmp_path: Path) -> None:
    # Growing train must never change the committed test/calib images.
    bigger = md.make_detection_set(tmp_path, seed=7, counts={**DET_COUNTS, "train": 9})
    for image_id in _read_ids(det_set, "test") + _read_ids(det_set, "calib"):
        for rel in (f"JPEGImages/{image_id}.jpg", f"Annotations/{image_id}.xml"):
            assert (bigger / rel).read_bytes() == (det_set / rel).read_bytes()


# ------------------------------------------------------------------------------------- detection


def test_layout_and_split_files(det_set: Path) -> None:
    for split, n in DET_COUNTS.items():
        assert len(_read_ids(det_set, split)) == n
    assert _read_ids(det_set, "trainval") == _read_ids(det_set, "train") + _read_ids(det_set, "val")
    assert (det_set / "classes.txt").read_text().split() == list(md.DET_CLASSES)
    jpegs = {p.stem for p in (det_set / "JPEGImages").glob("*.jpg")}
    xmls = {p.stem for p in (det_set / "Annotations").glob("*.xml")}
    assert jpegs == xmls == {i for s in md.SPLITS for i in _read_ids(det_set, s)}


def test_splits_are_disjoint(det_set: Path) -> None:
    ids = {s: set(_read_ids(det_set, s)) for s in md.SPLITS}
    for a in md.SPLITS:
        for b in md.SPLITS:
            if a < b:
                assert not ids[a] & ids[b], (a, b)
    assert sum(map(len, ids.values())) == sum(DET_COUNTS.values())


def test_split_images_differ_in_content(det_set: Path) -> None:
    # Disjoint ids are not enough if two splits drew the same pixels.
    digests = [(det_set / "JPEGImages" / f"{i}.jpg").read_bytes() for s in md.SPLITS for i in _read_ids(det_set, s)]
    assert len(set(digests)) == len(digests)


def test_xml_is_valid_voc(det_set: Path) -> None:
    for image_id in sorted(p.stem for p in (det_set / "Annotations").glob("*.xml")):
        root = ET.parse(det_set / "Annotations" / f"{image_id}.xml").getroot()
        assert root.tag == "annotation"
        assert root.findtext("folder") == "VOC2007"
        assert root.findtext("filename") == f"{image_id}.jpg"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert int(root.findtext("size/depth")) == 3
        img = cv2.imread(str(det_set / "JPEGImages" / f"{image_id}.jpg"))
        assert img.shape == (height, width, 3)
        objects = root.findall("object")
        assert objects, image_id
        for obj in objects:
            assert obj.findtext("name") in md.DET_CLASSES
            assert obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") in ("0", "1")
            assert obj.findtext("difficult") in ("0", "1")
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin < xmax <= width
            assert 1 <= ymin < ymax <= height


def test_per_class_lists_follow_devkit(det_set: Path) -> None:
    ids = _read_ids(det_set, "test")
    for cls in md.DET_CLASSES:
        rows = [line.split() for line in (det_set / "ImageSets" / "Main" / f"{cls}_test.txt").read_text().splitlines()]
        assert [r[0] for r in rows] == ids
        for image_id, flag in rows:
            objs = [o for o in ET.parse(det_set / "Annotations" / f"{image_id}.xml").getroot().iter("object") if o.findtext("name") == cls]
            expected = -1 if not objs else 0 if all(o.findtext("difficult") == "1" for o in objs) else 1
            assert int(flag) == expected


def test_sample_has_difficult_truncated_and_every_class(sample_objects: list) -> None:
    objects = [o for _, objs in sample_objects for o in objs]
    assert any(o.difficult for o in objects)
    assert any(o.truncated for o in objects)
    assert any(o.truncated and not o.difficult for o in objects)
    assert {o.name for o in objects} == set(md.DET_CLASSES)
    sides = [min(o.box[2] - o.box[0], o.box[3] - o.box[1]) + 1 for o in objects]
    assert min(sides) < 12  # small objects are part of the task
    assert 0.03 < np.mean([o.difficult for o in objects]) < 0.3


def test_flags_follow_documented_rules(sample_objects: list) -> None:
    for (h, w), objects in sample_objects:
        for o in objects:
            xmin, ymin, xmax, ymax = o.box
            side = min(xmax - xmin, ymax - ymin) + 1
            small_or_hidden = side < md.DIFFICULT_MIN_SIDE_PX or o.visible_fraction < md.DIFFICULT_MIN_VISIBLE_FRACTION
            assert o.difficult == small_or_hidden
            if o.truncated:  # a truncated object's visible box must reach the border it crosses
                assert xmin == 1 or ymin == 1 or xmax == w or ymax == h


def test_image_sizes_cover_detector_size_and_others(sample_objects: list) -> None:
    sizes = {shape for shape, _ in sample_objects}
    assert (md.DET_SIZE, md.DET_SIZE) in sizes
    lo, hi = md.DET_SIZE_RANGE
    assert all(lo <= s <= hi for shape in sizes for s in shape)
    assert any(h != w for h, w in sizes)


def test_boxes_are_tight_on_a_plain_background() -> None:
    # A shape painted on a flat background: its box must be the extent of the changed pixels.
    stamp = md._stamp("square", np.random.default_rng(3), cx=40.3, cy=30.7, diameter=30.0)
    alpha = stamp.on_image(64, 80)
    xmin, ymin, xmax, ymax = md._visible_box(alpha >= 128)
    rows, cols = np.flatnonzero((alpha > 0).any(1)), np.flatnonzero((alpha > 0).any(0))
    # Anti-aliased fringe may reach one pixel past the box, never more.
    assert cols[0] + 1 >= xmin - 1 and cols[-1] + 1 <= xmax + 1
    assert rows[0] + 1 >= ymin - 1 and rows[-1] + 1 <= ymax + 1


# -------------------------------------------------------------------------------- classification


def test_class_lists_are_sorted() -> None:
    # harness/data readers and torchvision's ImageFolder default to sorted names; any other order
    # would silently permute labels between training and evaluation.
    assert list(md.DET_CLASSES) == sorted(md.DET_CLASSES)
    assert list(md.CLS_CLASSES) == sorted(md.CLS_CLASSES)
    assert set(md.DET_CLASSES) < set(md.CLS_CLASSES)


def test_classification_folders_have_every_class(cls_set: Path) -> None:
    assert (cls_set / "classes.txt").read_text().split() == list(md.CLS_CLASSES)
    assert len(md.CLS_CLASSES) >= 10
    for split, n in CLS_COUNTS.items():
        per_class = {c: sorted((cls_set / split / c).glob("*.jpg")) for c in md.CLS_CLASSES}
        assert sorted(p.name for p in (cls_set / split).iterdir() if p.is_dir()) == sorted(md.CLS_CLASSES)
        assert all(per_class.values()), split
        assert sum(map(len, per_class.values())) == n
        assert max(map(len, per_class.values())) - min(map(len, per_class.values())) <= 1  # balanced


def test_classification_lists_and_sizes(cls_set: Path) -> None:
    shapes = set()
    for split in md.SPLITS:
        for line in (cls_set / f"{split}.txt").read_text().splitlines():
            rel, label = line.split()
            assert rel.split("/")[:2] == [split, md.CLS_CLASSES[int(label)]]
            img = cv2.imread(str(cls_set / rel))
            lo, hi = md.CLS_SIZE_RANGE
            assert img is not None and lo <= min(img.shape[:2]) and max(img.shape[:2]) <= hi
            shapes.add(img.shape[:2])
    assert any(h != w for h, w in shapes)  # the resize-short-side + centre-crop path is exercised


def test_classification_splits_are_disjoint(cls_set: Path) -> None:
    names = {s: {p.name for p in (cls_set / s).rglob("*.jpg")} for s in md.SPLITS}
    contents = [p.read_bytes() for p in cls_set.rglob("*.jpg")]
    assert not names["test"] & names["calib"]
    assert len(set(contents)) == len(contents)


# ------------------------------------------------------------------------------- options and CLI


def test_bad_counts_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Expected a subset"):
        md.make_detection_set(tmp_path, seed=0, counts={"tets": 3})
    with pytest.raises(ValueError, match="Expected 0 <= count"):
        md.make_classification_set(tmp_path, seed=0, counts={"test": -1})


def test_refuses_to_mix_with_existing_output(tmp_path: Path) -> None:
    md.make_detection_set(tmp_path, seed=0, counts={"test": 1})
    with pytest.raises(FileExistsError, match="overwrite"):
        md.make_detection_set(tmp_path, seed=0, counts={"test": 1})
    voc = md.make_detection_set(tmp_path, seed=0, counts={"calib": 1}, overwrite=True)
    assert not (voc / "ImageSets" / "Main" / "test.txt").exists()


def test_cli_writes_sets_and_previews(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path / "d"), "--seed", "1", "--preview", str(tmp_path)]
    args += [f"--det-{s}={n}" for s, n in {"train": 0, "val": 0, "test": 2, "calib": 1}.items()]
    args += [f"--cls-{s}={n}" for s, n in {"train": 0, "val": 0, "test": 13, "calib": 0}.items()]
    assert md.main(args) == 0
    assert len(_read_ids(tmp_path / "d" / "VOCdevkit" / "VOC2007", "test")) == 2
    assert len(list((tmp_path / "d" / "classification" / "test").rglob("*.jpg"))) == 13
    assert cv2.imread(str(tmp_path / "contact_det.png")) is not None
    assert cv2.imread(str(tmp_path / "contact_cls.png")) is not None


def test_cli_only_det(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--only", "det", "--det-train=1", "--det-val=0", "--det-test=0", "--det-calib=0"]
    assert md.main(args) == 0
    assert (tmp_path / "VOCdevkit").is_dir() and not (tmp_path / "classification").exists()
