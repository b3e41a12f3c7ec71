"""fp32 evaluation of the bundled demo models through the harness pipeline (no torch needed).

Detector: ``harness.data.VOCDataset`` -> ``harness.data.preprocess`` -> onnxruntime via
``harness.model.make_session`` -> ``harness.tasks.decode_boxes`` against ``harness.tasks.prior_boxes`` ->
``harness.tasks.multiclass_nms`` -> ``ImageMeta.to_original`` -> VOC 1-based boxes -> ``harness.metrics.VocAP``
(devkit defaults: 11-point, IoU >= 0.5, +1 pixel widths, difficult ignored).

Classifier: ``harness.data.ClassFolderDataset`` -> ``preprocess`` -> session -> ``ClassificationMetric``.

Model parameters (priors, variances, preprocessing, classes) are read from the JSON sidecar written by
the training script next to each model (``suites/assets/<model>.json``).

    python tools/evaluate_assets.py                 # both models, full test splits
    python tools/evaluate_assets.py --limit 60      # first 60 detection images, every 5th class image
    python tools/evaluate_assets.py --json out.json

The tests load this file by path (``tools/`` is not a package) and call :func:`evaluate_detector` and
:func:`evaluate_classifier`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.data import ClassFolderDataset, PreprocessSpec, VOCDataset, preprocess  # noqa: E402
from harness.data.boxes import xyxy_to_voc  # noqa: E402
from harness.metrics import ClassificationMetric, VocAP  # noqa: E402
from harness.model import load_model, make_session  # noqa: E402
from harness.tasks import PriorBoxLayer, decode_boxes, multiclass_nms, prior_boxes  # noqa: E402

ASSETS = REPO / "suites" / "assets"
DETECTOR = ASSETS / "ssdlite_shapes.onnx"
CLASSIFIER = ASSETS / "resnet_shapes.onnx"
VOC_ROOT = ASSETS / "synthvoc" / "VOCdevkit" / "VOC2007"
CLS_ROOT = ASSETS / "synthcls" / "classification"

# Caffe SSD's VOC test settings.
NMS = {"iou_threshold": 0.45, "score_threshold": 0.01, "top_k": 400, "keep_top_k": 200}


def sidecar(model_path: Path) -> dict[str, Any]:
    return json.loads(Path(model_path).with_suffix(".json").read_text())


def detector_priors(meta: dict[str, Any]) -> np.ndarray:
    """Centre-form normalised priors [P, 4] from the sidecar's Caffe PriorBox parameters."""
    pb = meta["prior_boxes"]
    layers = []
    for layer in pb["layers"]:
        kw = dict(layer)
        if "feature_size" in kw:
            kw["feature_size"] = tuple(kw["feature_size"])
        layers.append(PriorBoxLayer(**kw))
    return prior_boxes(layers, image_size=tuple(pb["image_size"]), clip=pb["clip"])


def evaluate_detector(
    model_path: Path = DETECTOR, voc_root: Path = VOC_ROOT, *, split: str = "test", limit: int | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    meta = sidecar(model_path)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    priors = detector_priors(meta)
    variances = tuple(meta["prior_boxes"]["variances"])
    classes = tuple(meta["classes"])
    model = load_model(model_path)
    sess = make_session(model.serialized(), threads=threads, source=str(model_path))
    input_name = model.input_names[0]
    ds = VOCDataset(voc_root, split=split, classes=classes)
    samples = list(ds)[:limit] if limit else list(ds)
    metric = VocAP(class_names=classes)
    n_dets = 0
    for s in samples:
        x, im = preprocess(s.read(), spec)
        scores, loc = sess.run(["scores", "boxes"], {input_name: x[None]})
        boxes = decode_boxes(loc[0], priors, variances=variances)  # normalised corners of the model input
        dets = multiclass_nms(boxes, scores[0], background_label=0, **NMS)
        # Model input -> original image (continuous pixels) -> the annotations' 1-based inclusive convention.
        det_boxes = xyxy_to_voc(im.to_original(dets.boxes, normalized=True))
        t = s.target
        metric.update(s.image_id, t.boxes, t.labels, t.difficult, det_boxes, dets.scores, dets.labels - 1)
        n_dets += len(dets)
    res = metric.compute()
    return {"ap": dict(res.ap), "map": float(res.map), "n_images": len(samples), "n_detections": n_dets,
            "num_priors": int(priors.shape[0])}


def evaluate_classifier(
    model_path: Path = CLASSIFIER, root: Path = CLS_ROOT, *, split: str = "test", every: int = 1, threads: int = 2
) -> dict[str, Any]:
    meta = sidecar(model_path)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    model = load_model(model_path)
    sess = make_session(model.serialized(), threads=threads, source=str(model_path))
    input_name = model.input_names[0]
    ds = ClassFolderDataset(root / split)
    if meta.get("classes") and tuple(meta["classes"]) != ds.class_names:
        raise RuntimeError(f"class order {ds.class_names} differs from the model's {meta['classes']}")
    samples = list(ds)[::every]
    metric = ClassificationMetric(num_classes=len(ds.class_names), topk=(1, 5))
    for s in samples:
        x, _ = preprocess(s.read(), spec)
        (logits,) = sess.run(["logits"], {input_name: x[None]})
        metric.update(logits, np.asarray([s.target]))
    res = metric.compute()
    out = {"top1": float(res.top1), "n_images": len(samples)}
    for name in ("topk", "per_class", "mean_class_accuracy"):
        if hasattr(res, name):
            value = getattr(res, name)
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", type=Path, default=DETECTOR)
    ap.add_argument("--classifier", type=Path, default=CLASSIFIER)
    ap.add_argument("--voc-root", type=Path, default=VOC_ROOT)
    ap.add_argument("--cls-root", type=Path, default=CLS_ROOT)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="first N detection images; every 5th class image")
    ap.add_argument("--only", choices=("det", "cls"), default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    if args.only in (None, "det"):
        det = evaluate_detector(args.detector, args.voc_root, split=args.split, limit=args.limit, threads=args.threads)
        results["detector"] = det
        print(f"detector {args.detector.name}: {det['n_images']} images, {det['num_priors']} priors")
        for name, ap_value in det["ap"].items():
            print(f"  AP {name:10s} {ap_value:.4f}")
        print(f"  mAP (VOC07 11-point, IoU 0.5, difficult ignored) {det['map']:.4f}")
    if args.only in (None, "cls"):
        cls = evaluate_classifier(args.classifier, args.cls_root, split=args.split,
                                  every=5 if args.limit else 1, threads=args.threads)
        results["classifier"] = cls
        print(f"classifier {args.classifier.name}: {cls['n_images']} images, top-1 {cls['top1']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
