"""VOC AP: harness.metrics.VocAP vs a classic per-class loop vs pycocotools, on the same boxes.

Prints times and ratios (never a timed test). The classic loop is written here from the devkit's
description -- per class: gather detections, stable-sort by score, walk them one by one, IoU
against that image's objects of the class, mark TP/FP -- and must give IDENTICAL AP (asserted
with ``==``, for both AP methods). pycocotools computes a different metric (COCO AP over 10 IoU
thresholds), so only its time is compared.

    .venv/bin/python benchmarks/bench_voc.py [--images 5000] [--dets 50] [--skip-coco]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.metrics.voc import VocAP  # noqa: E402

N_CLASSES = 20


def make_data(n_images: int, n_dets: int, seed: int = 0) -> list[tuple]:
    """VOC-like images: 1-6 objects, ~10% difficult; detections are jittered objects + clutter.

    Scores are rounded to 1e-4 so that ties across and within images are common: equality with
    the baseline then also checks the tie rule.
    """
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        g = int(rng.integers(1, 7))
        xy = rng.uniform(0, 400, size=(g, 2))
        wh = rng.uniform(10, 200, size=(g, 2))
        gb = np.round(np.concatenate([xy, xy + wh], axis=1))
        gl = rng.integers(0, N_CLASSES, size=g)
        gd = rng.random(g) < 0.1
        n_near = n_dets // 2
        src = rng.integers(0, g, size=n_near)
        near = gb[src] + rng.normal(0, 12, size=(n_near, 4))
        near_l = np.where(rng.random(n_near) < 0.8, gl[src], rng.integers(0, N_CLASSES, size=n_near))
        fxy = rng.uniform(0, 450, size=(n_dets - n_near, 2))
        far = np.concatenate([fxy, fxy + rng.uniform(5, 150, size=fxy.shape)], axis=1)
        db = np.round(np.concatenate([near, far]), 1)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2])
        dl = np.concatenate([near_l, rng.integers(0, N_CLASSES, size=n_dets - n_near)])
        ds = np.round(rng.random(n_dets), 4)
        images.append((f"{i:06d}", gb, gl, gd, db, ds, dl))
    return images


def classic_loop(images: list[tuple], *, use_11point: bool) -> dict[int, float]:
    """Straightforward per-class evaluation, one Python iteration per detection."""
    aps = {}
    for c in range(N_CLASSES):
        recs, npos = {}, 0
        ids, conf, boxes = [], [], []
        for image_id, gb, gl, gd, db, ds, dl in images:
            m = gl == c
            recs[image_id] = {"bbox": gb[m], "difficult": gd[m], "det": np.zeros(int(m.sum()), bool)}
            npos += int((~gd[m]).sum())
            k = dl == c
            ids.extend([image_id] * int(k.sum()))
            conf.append(ds[k])
            boxes.append(db[k])
        conf_a, boxes_a = np.concatenate(conf), np.concatenate(boxes)
        order = np.argsort(-conf_a, kind="stable")
        boxes_a = boxes_a[order]
        ids = [ids[j] for j in order]
        nd = len(ids)
        tp, fp = np.zeros(nd), np.zeros(nd)
        for d in range(nd):
            rec = recs[ids[d]]
            bb, gt = boxes_a[d], rec["bbox"]
            ovmax = -np.inf
            if gt.size:
                ixmin = np.maximum(gt[:, 0], bb[0])
                iymin = np.maximum(gt[:, 1], bb[1])
                ixmax = np.minimum(gt[:, 2], bb[2])
                iymax = np.minimum(gt[:, 3], bb[3])
                iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
                ih = np.maximum(iymax - iymin + 1.0, 0.0)
                inters = iw * ih
                uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                       + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
                ov = inters / uni
                ovmax, jmax = ov.max(), int(ov.argmax())
            if ovmax >= 0.5:
                if not rec["difficult"][jmax]:
                    if not rec["det"][jmax]:
                        tp[d] = 1.0
                        rec["det"][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / float(npos)
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        aps[c] = _baseline_ap(recall, precision, use_11point)
    return aps


def _baseline_ap(rec: np.ndarray, prec: np.ndarray, use_11point: bool) -> float:
    if use_11point:
        ps = []
        for k in range(11):
            sel = prec[rec >= k / 10.0]
            ps.append(float(sel.max()) if sel.size else 0.0)
        return sum(ps) / 11.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def harness_eval(images: list[tuple], *, ap_method: str) -> dict[int, float]:
    metric = VocAP(num_classes=N_CLASSES, ap_method=ap_method)
    for image_id, gb, gl, gd, db, ds, dl in images:
        metric.update(image_id, gb, gl, gd, db, ds, dl)
    result = metric.compute()
    return {int(k): v for k, v in result.ap.items()}


def pycocotools_eval(images: list[tuple]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, dets, ann_id = [], [], 1
    for i, (_, gb, gl, gd, db, ds, dl) in enumerate(images):
        for b, lab, d in zip(gb, gl, gd):
            w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
            anns.append({"id": ann_id, "image_id": i, "category_id": int(lab) + 1, "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": int(d)})
            ann_id += 1
        for b, s, lab in zip(db, ds, dl):
            dets.append({"image_id": i, "category_id": int(lab) + 1, "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(len(images))], "annotations": anns,
                      "categories": [{"id": c + 1} for c in range(N_CLASSES)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=50)
    parser.add_argument("--skip-coco", action="store_true")
    args = parser.parse_args()
    images = make_data(args.images, args.dets)
    n_det = sum(len(im[5]) for im in images)
    print(f"{args.images} images, {N_CLASSES} classes, {n_det} detections")

    times = {}
    for method, use07 in (("11point", True), ("area", False)):
        t0 = time.perf_counter()
        ours = harness_eval(images, ap_method=method)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = classic_loop(images, use_11point=use07)
        t_base = time.perf_counter() - t0
        assert ours == base, {c: (ours[c], base[c]) for c in ours if ours[c] != base[c]}
        times[method] = (t_ours, t_base)
        print(f"[{method:7s}] harness VocAP {t_ours:7.3f} s | classic loop {t_base:7.3f} s | "
              f"speed-up {t_base / t_ours:5.1f}x | mAP {np.mean(list(ours.values())):.6f} (identical)")
    if not args.skip_coco:
        t0 = time.perf_counter()
        coco_ap = pycocotools_eval(images)
        t_coco = time.perf_counter() - t0
        t_ours = times["11point"][0]
        print(f"[coco   ] pycocotools {t_coco:7.3f} s (AP@[.5:.95] {coco_ap:.4f}) | "
              f"pycocotools / harness = {t_coco / t_ours:5.1f}x | pycocotools / classic = "
              f"{t_coco / times['11point'][1]:5.1f}x")


if __name__ == "__main__":
    main()
