"""``quant-harness metrics voc|coco`` through the command module with a tiny argparse parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from harness.commands import metrics as cmd
from harness.errors import DataError
from harness.metrics.coco import STAT_NAMES
from harness.metrics.voc import VocAP

OBJECTS = {  # image id -> (class, box, difficult)
    "000001": [("cat", (10, 10, 50, 50), 0), ("dog", (60, 60, 100, 100), 0)],
    "000002": [("cat", (1, 1, 30, 30), 1), ("cat", (40, 40, 80, 80), 0)],
    "000003": [],
}
RESULTS = {
    "cat": ["000001 0.9 10 10 50 50", "000002 0.8 40 40 80 80", "000002 0.7 1 1 30 30", "000003 0.6 1 1 9 9",
            "000001 0.5 10 10 50 50"],
    "dog": ["000001 0.4 60 60 100 100"],
    "bird": ["000003 0.3 5 5 20 20"],
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def make_voc(root: Path) -> Path:
    voc = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for image_id, objs in OBJECTS.items():
        xml = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objs)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>120</width><height>120</height><depth>3</depth></size>{xml}</annotation>")
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    (voc / "ImageSets/Main/test.txt").write_text("\n".join(OBJECTS) + "\n")
    return voc


def write_results(folder: Path, results: dict[str, list[str]]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, lines in results.items():
        (folder / f"comp4_det_test_{name}.txt").write_text("\n".join(lines) + "\n")
    return folder


def run_json(argv, capsys) -> dict:
    args = parse(argv)
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def test_voc_command(tmp_path, capsys):
    voc = make_voc(tmp_path)
    res = write_results(tmp_path / "res", RESULTS)
    out = run_json(["metrics", "voc", "--annotations", str(voc), "--split", "test", "--results", str(res)], capsys)
    # cat: 2 positives (one difficult): tp(.9), tp(.8), ignored(.7), fp(.6), fp dup(.5) -> AP 1
    assert out["ap"] == {"bird": None, "cat": 1.0, "dog": 1.0}
    assert out["map"] == 1.0 and out["n_images"] == 3 and out["ap_method"] == "11point"
    # Same numbers as the metric class fed by hand.
    m = VocAP(class_names=["bird", "cat", "dog"])
    m.update("000001", [[10, 10, 50, 50], [60, 60, 100, 100]], [1, 2], [0, 0],
             [[10, 10, 50, 50], [10, 10, 50, 50], [60, 60, 100, 100]], [0.9, 0.5, 0.4], [1, 1, 2])
    m.update("000002", [[1, 1, 30, 30], [40, 40, 80, 80]], [1, 1], [1, 0],
             [[40, 40, 80, 80], [1, 1, 30, 30]], [0.8, 0.7], [1, 1])
    m.update("000003", np.zeros((0, 4)), [], [], [[1, 1, 9, 9], [5, 5, 20, 20]], [0.6, 0.3], [1, 0])
    assert m.compute().map == out["map"]


def test_voc_command_options_and_missing_class_file(tmp_path, capsys):
    voc = make_voc(tmp_path)
    res = write_results(tmp_path / "res", {"cat": ["000003 0.95 1 1 9 9"] + RESULTS["cat"]})
    out = run_json(["metrics", "voc", "--annotations", str(voc), "--results", str(res), "--ap", "area",
                    "--difficult", "count"], capsys)
    assert out["ap"]["dog"] == 0.0  # objects but no results file
    assert out["difficult"] == "count" and out["n_pos"]["cat"] == 3
    # cat, counting difficult: fp .95, tp .9, tp .8, tp .7, fp, fp over 3 positives; precision at the
    # tps is 1/2, 2/3, 3/4 and the monotone envelope lifts all three to 3/4.
    assert out["ap"]["cat"] == pytest.approx(0.75)


@pytest.mark.parametrize("line, fragment", [
    ("000001 0.9 10 10 50", "6 fields"), ("000001 high 10 10 50 50", "non-numeric"),
    ("000001 nan 10 10 50 50", "NaN"), ("000001 0.9 50 10 10 50", "inverted"), ("999999 0.9 1 1 5 5", "999999"),
])
def test_voc_malformed_results_name_file_and_line(tmp_path, line, fragment):
    voc = make_voc(tmp_path)
    res = write_results(tmp_path / "res", {"cat": [RESULTS["cat"][0], line]})
    args = parse(["metrics", "voc", "--annotations", str(voc), "--results", str(res)])
    with pytest.raises(DataError) as info:
        args.func(args)
    assert "comp4_det_test_cat.txt line 2" in str(info.value) and fragment in str(info.value)


def test_coco_command(tmp_path, capsys):
    gt = {"images": [{"id": 1}, {"id": 2}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 100, 100], "area": 10000,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "cat"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    out = run_json(["metrics", "coco", "--annotations", str(tmp_path / "gt.json"),
                    "--results", str(tmp_path / "dt.json")], capsys)
    assert list(out) == list(STAT_NAMES)
    assert out["AP50"] == pytest.approx(0.5, abs=0.01)  # one of two objects found at precision 1
    assert out["APs"] is None  # no small objects: undefined -> null, not NaN


def test_metrics_without_kind_is_usage_error(capsys):
    args = parse(["metrics"])
    assert args.func(args) == 2
