"""COCO detection metrics through pycocotools, with a streaming front end.

Why an adapter and not our own implementation: COCO AP has many details (crowd regions, area
ranges from the annotation's segmentation area, 101-point interpolation, maxDets) and the
published numbers come from pycocotools; matching it bit for bit is the point. We only own the
plumbing: accumulate per-image arrays, build the in-memory COCO objects, silence its prints,
and define the cases where it would crash or return its ``-1`` sentinel.

* Boxes come in as ``[N, 4]`` xyxy by default (as in :class:`~harness.metrics.voc.VocAP`), or
  ``box_format="xywh"`` (COCO's own). Labels are COCO category ids.
* A stat pycocotools cannot define (``-1``: no ground truth in that area range) is NaN.
* No detections at all: pycocotools' ``loadRes`` fails on an empty list, so we build an empty
  results object; every stat with ground truth is then 0.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Literal

import numpy as np

from harness.errors import AnnotationError, ConfigError, DataError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class CocoDetectionMetric:
    """Streaming COCO bbox metric: ``update`` per image, ``compute`` -> the 12 named stats."""

    def __init__(self, *, box_format: Literal["xyxy", "xywh"] = "xyxy",
                 categories: list[dict] | None = None) -> None:
        if box_format not in ("xyxy", "xywh"):
            raise ConfigError(f"Got box_format={box_format!r}", expected="xyxy or xywh")
        self.box_format = box_format
        self.categories = categories
        self.reset()

    def reset(self) -> None:
        self._images: list[dict] = []
        self._seen: set[int] = set()
        self._gts: list[dict] = []
        self._dets: list[dict] = []

    def update(self, image_id: int, gt_boxes: np.ndarray, gt_labels: np.ndarray,
               det_boxes: np.ndarray, det_scores: np.ndarray, det_labels: np.ndarray, *,
               gt_iscrowd: np.ndarray | None = None, gt_areas: np.ndarray | None = None) -> None:
        """Add one image. ``gt_areas`` defaults to box areas (COCO uses segmentation areas)."""
        image_id = int(image_id)
        if image_id in self._seen:
            raise DataError(f"Image {image_id} was added twice", expected="each image once")
        gb = self._xywh(gt_boxes, image_id)
        db = self._xywh(det_boxes, image_id)
        gl, dl = np.asarray(gt_labels).reshape(-1), np.asarray(det_labels).reshape(-1)
        ds = np.asarray(det_scores, dtype=np.float64).reshape(-1)
        crowd = np.zeros(len(gb), bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool).reshape(-1)
        areas = gb[:, 2] * gb[:, 3] if gt_areas is None else np.asarray(gt_areas, np.float64).reshape(-1)
        if not (len(gl) == len(crowd) == len(areas) == len(gb)) or not (len(dl) == len(ds) == len(db)):
            raise DataError(f"Image {image_id}: boxes, labels, scores, iscrowd and areas differ in length",
                            expected="one entry per box")
        self._seen.add(image_id)
        self._images.append({"id": image_id})
        for b, lab, c, a in zip(gb.tolist(), gl.tolist(), crowd.tolist(), areas.tolist()):
            # ids start at 1: COCOeval treats a matched id of 0 as "unmatched".
            self._gts.append({"id": len(self._gts) + 1, "image_id": image_id, "category_id": int(lab),
                              "bbox": b, "area": a, "iscrowd": int(c)})
        for b, s, lab in zip(db.tolist(), ds.tolist(), dl.tolist()):
            self._dets.append({"image_id": image_id, "category_id": int(lab), "bbox": b, "score": s})

    def merge(self, other: "CocoDetectionMetric") -> "CocoDetectionMetric":
        """Append ``other``'s images (in place; returns self)."""
        overlap = self._seen & other._seen
        if overlap:
            raise DataError(f"Both shards contain image {next(iter(overlap))}", expected="disjoint shards")
        self._images.extend(other._images)
        self._seen |= other._seen
        for ann in other._gts:
            self._gts.append({**ann, "id": len(self._gts) + 1})
        self._dets.extend(other._dets)
        return self

    def compute(self) -> dict[str, float]:
        cats = self.categories
        if cats is None:
            ids = sorted({a["category_id"] for a in self._gts} | {d["category_id"] for d in self._dets})
            cats = [{"id": i, "name": str(i)} for i in ids]
        # Copies: pycocotools writes 'ignore', 'id', 'segmentation' into the dicts it is given.
        dataset = {"images": [dict(i) for i in self._images], "annotations": [dict(a) for a in self._gts],
                   "categories": cats}
        return evaluate_coco(dataset, [dict(d) for d in self._dets])

    def _xywh(self, boxes: np.ndarray, image_id: int) -> np.ndarray:
        arr = np.asarray(boxes, dtype=np.float64)
        if arr.size == 0:
            return np.zeros((0, 4))
        if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
            raise DataError(f"Image {image_id}: boxes have shape {arr.shape} or non-finite values",
                            expected=f"a finite [N, 4] {self.box_format} array")
        if self.box_format == "xyxy":
            arr = np.concatenate([arr[:, :2], arr[:, 2:] - arr[:, :2]], axis=1)
        return arr


def evaluate_coco(gt_dataset: dict, detections: list[dict]) -> dict[str, float]:
    """Run COCOeval (bbox) on an in-memory GT dataset dict and a results list; 12 named stats."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dataset
        gt.createIndex()
        if detections:
            dt = gt.loadRes(detections)
        else:
            dt = COCO()
            dt.dataset = {"images": list(gt_dataset.get("images", [])), "annotations": [],
                          "categories": list(gt_dataset.get("categories", []))}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float("nan") if v == -1 else float(v)) for name, v in zip(STAT_NAMES, ev.stats)}


def evaluate_coco_files(gt_json: str | Path, results_json: str | Path) -> dict[str, float]:
    """The 12 stats for a COCO annotation file and a standard results file (a JSON list)."""
    gt = _load_json(Path(gt_json), AnnotationError, "a COCO annotation object")
    if not isinstance(gt, dict) or "annotations" not in gt or "images" not in gt:
        raise AnnotationError(f"{gt_json} is not a COCO annotation file",
                              expected="a JSON object with 'images', 'annotations' and 'categories'")
    gt.setdefault("categories", [])
    dets = _load_json(Path(results_json), DataError, "a COCO results list")
    if not isinstance(dets, list) or not all(isinstance(d, dict) for d in dets):
        raise DataError(f"{results_json} is not a COCO results file",
                        expected="a JSON list of {image_id, category_id, bbox, score}")
    for i, d in enumerate(dets):
        if not {"image_id", "category_id", "bbox", "score"} <= d.keys():
            raise DataError(f"{results_json}: entry {i} lacks one of image_id, category_id, bbox, score",
                            expected="bbox results", remedy="write one dict per detection")
    known = {img["id"] for img in gt["images"]}
    unknown = {d["image_id"] for d in dets} - known
    if unknown:
        raise DataError(f"{results_json} has detections for {len(unknown)} image ids not in {gt_json}, "
                        f"e.g. {next(iter(unknown))}", expected="results for annotated images only")
    return evaluate_coco(gt, dets)


def _load_json(path: Path, err: type[DataError], what: str) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise err(f"{path} does not exist", expected=what) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise err(f"{path} is not valid JSON ({exc})", expected=what) from None
