"""``quant-harness metrics voc|coco``: score standard results files, print JSON.

Why it exists: teams already have detections in the devkit's text format or COCO's results JSON
(from ncnn, bmrt_test, TFLite runs); this scores them with the same metric code the harness uses,
so a number in a report can be reproduced from the files alone.

VOC classes are the sorted union of the classes named by results files and the classes found in
the annotations (the VOC list is alphabetical, so this is the devkit's order). A class with
objects but no results file has AP 0; a class without positives has AP ``null`` and is left out
of ``map``. Detections are fed per image in split order, then file order, so score ties break by
that order. User errors raise ``HarnessError`` (the dispatcher prints them, exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError
from harness.metrics.coco import evaluate_coco_files
from harness.metrics.voc import VocAP
from harness.metrics.voc_results import find_results_files, read_class_results


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("metrics", help="score VOC / COCO results files and print JSON",
                                   description=__doc__.splitlines()[0])
    parser.set_defaults(func=run)
    kinds = parser.add_subparsers(dest="metrics_kind", metavar="KIND")

    voc = kinds.add_parser("voc", help="VOC AP from comp4_det_<split>_<class>.txt files")
    voc.add_argument("--annotations", required=True, type=Path,
                     help="VOC root such as VOCdevkit/VOC2007 (Annotations/, ImageSets/Main/, JPEGImages/)")
    voc.add_argument("--split", default="test", help="image set name in ImageSets/Main (default: test)")
    voc.add_argument("--results", required=True, type=Path, help="folder of comp4_det_<split>_<class>.txt")
    voc.add_argument("--ap", dest="ap_method", choices=("11point", "area"), default="11point",
                     help="11point = VOC2007 (default), area = VOC2010+")
    voc.add_argument("--difficult", choices=("ignore", "count"), default="ignore")
    voc.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    voc.add_argument("--match-rule", choices=(">=", ">"), default=">=",
                     help="'>=' = VOC devkit (default), '>' = py-faster-rcnn")
    voc.add_argument("--no-plus-one", dest="pixel_plus_one", action="store_false",
                     help="continuous box coordinates (no +1 on widths/heights)")

    coco = kinds.add_parser("coco", help="COCO bbox stats from a GT json and a results json")
    coco.add_argument("--annotations", required=True, type=Path, help="COCO annotation json")
    coco.add_argument("--results", required=True, type=Path, help="COCO results json (list of detections)")


def run(args: argparse.Namespace) -> int:
    kind = getattr(args, "metrics_kind", None)
    if kind == "voc":
        out = voc_metrics(args)
    elif kind == "coco":
        out = evaluate_coco_files(args.annotations, args.results)
    else:
        print("usage: quant-harness metrics {voc,coco} ...  (see --help)")
        return 2
    print(json.dumps(_jsonable(out), indent=2))
    return 0


def voc_metrics(args: argparse.Namespace) -> dict[str, Any]:
    """Build the VOC JSON object (``map``, per-class ``ap``, and the options used)."""
    from harness.data.voc import VOCDataset

    files = find_results_files(args.results, split=args.split)
    dataset = VOCDataset(args.annotations, split=args.split, classes=None)
    classes = sorted(set(files) | set(dataset.class_names))
    if not classes:
        raise DataError(f"No classes: {args.results} has no comp4_det_{args.split}_*.txt and the annotations no objects",
                        expected="at least one results file or annotated object")
    index = {name: i for i, name in enumerate(classes)}
    remap = np.array([index[n] for n in dataset.class_names], dtype=np.int64)
    known = {s.image_id for s in dataset}

    per_image: dict[str, list[tuple[np.ndarray, np.ndarray, int]]] = defaultdict(list)
    for name, path in files.items():
        res = read_class_results(path)
        if not res.image_ids:
            continue
        uniq, inverse = np.unique(np.asarray(res.image_ids), return_inverse=True)
        for j, image_id in enumerate(uniq.tolist()):
            if image_id not in known:
                line = res.lines[np.flatnonzero(inverse == j)[0]]
                raise DataError(f"{path} line {line} names image {image_id!r}, which is not in split "
                                f"{args.split!r}", expected="detections for images of the evaluated split",
                                remedy="check --split, or regenerate the results for this split")
        order = np.argsort(inverse, kind="stable")  # stable: file order within an image
        bounds = np.searchsorted(inverse[order], np.arange(uniq.size + 1))
        for j, image_id in enumerate(uniq.tolist()):
            sel = order[bounds[j]:bounds[j + 1]]
            per_image[image_id].append((res.boxes[sel], res.scores[sel], index[name]))

    metric = VocAP(class_names=classes, ap_method=args.ap_method, difficult=args.difficult,
                   iou_threshold=args.iou, match_rule=args.match_rule, pixel_plus_one=args.pixel_plus_one)
    for sample in dataset:
        gt = sample.target
        dets = sorted(per_image.get(sample.image_id, []), key=lambda d: d[2])
        boxes = np.concatenate([d[0] for d in dets]) if dets else np.zeros((0, 4))
        scores = np.concatenate([d[1] for d in dets]) if dets else np.zeros(0)
        labels = np.concatenate([np.full(d[1].shape[0], d[2]) for d in dets]) if dets else np.zeros(0, np.int64)
        metric.update(sample.image_id, gt.boxes, remap[gt.labels] if len(gt) else gt.labels,
                      gt.difficult, boxes, scores, labels)
    result = metric.compute()
    return {
        "map": result.map,
        "ap": result.ap,
        "n_pos": {k: int(v) for k, v in result.n_pos.items()},
        "n_images": result.n_images,
        "ap_method": args.ap_method,
        "difficult": args.difficult,
        "iou_threshold": args.iou,
        "match_rule": args.match_rule,
        "pixel_plus_one": args.pixel_plus_one,
    }


def _jsonable(value: Any) -> Any:
    """NaN -> null: JSON has no NaN, and Python's ``NaN`` token breaks strict parsers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
