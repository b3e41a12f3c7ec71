"""COCO adapter: equals pycocotools run directly, streaming/merge, files, and the edge cases."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from harness.errors import AnnotationError, DataError
from harness.metrics.coco import STAT_NAMES, CocoDetectionMetric, evaluate_coco_files


def random_coco(seed: int, n_images: int = 12):
    """Per-image arrays (xywh) for the adapter and the equivalent raw COCO dicts."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for img in range(1, n_images + 1):
        g = int(rng.integers(0, 5))
        gb = np.concatenate([rng.uniform(0, 300, (g, 2)), rng.uniform(4, 150, (g, 2))], axis=1)
        gl = rng.integers(1, 4, size=g)
        crowd = rng.random(g) < 0.1
        d = int(rng.integers(0, 8))
        src = rng.integers(0, max(g, 1), size=d)
        db = (gb[src] if g else np.full((d, 4), 10.0)) + rng.normal(0, 5, (d, 4))
        db[:, 2:] = np.abs(db[:, 2:]) + 1
        dl = np.where(rng.random(d) < 0.8, gl[src] if g else 1, rng.integers(1, 4, size=d))
        ds = rng.random(d)
        images.append((img, gb, gl, crowd, db, ds, dl))
        for b, lab, c in zip(gb, gl, crowd):
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": int(lab), "bbox": b.tolist(),
                         "area": float(b[2] * b[3]), "iscrowd": int(c)})
        for b, s, lab in zip(db, ds, dl):
            dets.append({"image_id": img, "category_id": int(lab), "bbox": b.tolist(), "score": float(s)})
    gt = {"images": [{"id": i} for i in range(1, n_images + 1)], "annotations": anns,
          "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    return images, gt, dets


def direct_pycocotools(gt: dict, dets: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(dets))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.where(ev.stats == -1, np.nan, ev.stats)


def feed(metric, images):
    for img, gb, gl, crowd, db, ds, dl in images:
        metric.update(img, gb, gl, db, ds, dl, gt_iscrowd=crowd)
    return metric


@pytest.mark.parametrize("seed", [0, 1])
def test_adapter_equals_direct_pycocotools(seed):
    images, gt, dets = random_coco(seed)
    stats = feed(CocoDetectionMetric(box_format="xywh", categories=gt["categories"]), images).compute()
    assert list(stats) == list(STAT_NAMES)
    np.testing.assert_allclose(list(stats.values()), direct_pycocotools(gt, dets), rtol=0, atol=1e-12)
    assert 0 < stats["AP50"] <= 1


def test_xyxy_input_and_sharded_merge_equal_single_pass():
    images, gt, dets = random_coco(2)
    xyxy = [(i, np.concatenate([gb[:, :2], gb[:, :2] + gb[:, 2:]], 1), gl, c,
             np.concatenate([db[:, :2], db[:, :2] + db[:, 2:]], 1), ds, dl) for i, gb, gl, c, db, ds, dl in images]
    single = feed(CocoDetectionMetric(), xyxy).compute()
    merged = feed(CocoDetectionMetric(), xyxy[:5]).merge(feed(CocoDetectionMetric(), xyxy[5:])).compute()
    expected = direct_pycocotools(gt, dets)
    np.testing.assert_allclose(list(single.values()), expected, atol=1e-9)
    np.testing.assert_allclose(list(merged.values()), expected, atol=1e-9)


def test_no_detections_is_zero_not_a_crash():
    images, gt, _ = random_coco(3)
    empty = [(i, gb, gl, c, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for i, gb, gl, c, *_ in images]
    stats = feed(CocoDetectionMetric(box_format="xywh"), empty).compute()
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


def test_undefined_stats_are_nan():
    m = CocoDetectionMetric()
    m.update(1, [[0, 0, 400, 400]], [1], [[0, 0, 400, 400]], [0.9], [1])  # only a large object
    stats = m.compute()
    assert stats["APl"] == pytest.approx(1.0)
    assert np.isnan(stats["APs"]) and np.isnan(stats["APm"])


def test_files_equal_direct(tmp_path):
    images, gt, dets = random_coco(4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    stats = evaluate_coco_files(tmp_path / "gt.json", tmp_path / "dt.json")
    np.testing.assert_allclose(list(stats.values()), direct_pycocotools(gt, dets), atol=1e-12)
    (tmp_path / "empty.json").write_text("[]")
    assert evaluate_coco_files(tmp_path / "gt.json", tmp_path / "empty.json")["AP"] == 0.0


def test_bad_files_are_refused(tmp_path):
    _, gt, dets = random_coco(5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "stray.json").write_text(json.dumps([{**dets[0], "image_id": 999}]))
    with pytest.raises(AnnotationError):
        evaluate_coco_files(tmp_path / "bad.json", tmp_path / "gt.json")
    with pytest.raises(DataError, match="line|JSON"):
        evaluate_coco_files(tmp_path / "gt.json", tmp_path / "bad.json")
    with pytest.raises(DataError, match="999"):
        evaluate_coco_files(tmp_path / "gt.json", tmp_path / "stray.json")
    with pytest.raises(DataError):
        CocoDetectionMetric().merge(feed(CocoDetectionMetric(), [])).update(1, [[0, 0, 1]], [1], [], [], [])
