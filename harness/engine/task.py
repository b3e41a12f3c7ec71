"""Task adapters: model outputs -> detections or class scores -> fp32 and quantized task metrics.

One adapter per task sees both models' outputs for every evaluation image, so the metrics are paired by
image and the paired bootstrap (``harness.metrics.bootstrap``) can give an interval for fp32 - int8.
With ``pseudo_ground_truth`` the fp32 model's own outputs are the labels: that measures how far int8 moved
away from fp32, not accuracy, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.data import ImageMeta, Sample
from harness.data.boxes import xyxy_to_voc
from harness.errors import ConfigError
from harness.metrics import ClassificationMetric, CocoDetectionMetric, Top1Agreement, VocAP
from harness.metrics.bootstrap import paired_bootstrap
from harness.suite import Suite
from harness.suite_schema import ClassifierPostprocess, SsdPostprocess, UltrafacePostprocess
from harness.tasks import decode_boxes, multiclass_nms, prior_boxes, softmax
from harness.tasks.nms import Detections
from harness.tasks.ultraface import decode_ultraface, ultraface_detect, ultraface_priors

Outputs = Mapping[str, np.ndarray]
_PR_POINTS = 200
_PROBE_SCORE_MIN = 0.3
_PROBE_MAX_DETS = 20


@dataclass
class MetricsSummary:
    """Task metrics of both models; becomes ``results.json`` ``metrics`` (see docs/results.md)."""

    headline: str
    names: tuple[str, ...]
    fp32: dict[str, float]
    quantized: dict[str, float]
    difference: dict[str, dict[str, Any]]
    n_images: int
    class_names: tuple[str, ...]
    per_class: dict[str, list[float]]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"headline": self.headline, "names": list(self.names), "fp32": self.fp32,
                "quantized": self.quantized, "difference": self.difference, "n_images": self.n_images,
                "class_names": list(self.class_names), "per_class": self.per_class, **self.extra}


def _difference(fp32: float, quant: float, boot: Any | None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": fp32 - quant, "ci_low": None, "ci_high": None, "confidence": None,
                           "n_resamples": None}
    if boot is not None:
        out.update(ci_low=boot.ci_low, ci_high=boot.ci_high, confidence=boot.confidence,
                   n_resamples=boot.n_resamples)
    return out


def _thin(recall: np.ndarray, precision: np.ndarray) -> dict[str, list[float]]:
    idx = np.unique(np.linspace(0, max(len(recall) - 1, 0), min(len(recall), _PR_POINTS)).astype(int))
    return {"recall": recall[idx].tolist() if len(recall) else [],
            "precision": precision[idx].tolist() if len(precision) else []}


def _pick(outputs: Outputs, name: str | None, position: int, what: str) -> np.ndarray:
    if name is not None:
        if name not in outputs:
            raise ConfigError(f"Model has no output {name!r} ({what})", expected=f"one of {list(outputs)}",
                              remedy=f"fix [postprocess] {what} in the suite file")
        return outputs[name]
    names = list(outputs)
    conventional = what.removesuffix("_output")  # an output literally named "scores" / "boxes" / "logits" wins
    if conventional in outputs:
        return outputs[conventional]
    if position >= len(names):
        raise ConfigError(f"Model has {len(names)} output(s); the {what} is expected at position {position}",
                          expected="scores and boxes outputs", remedy=f"set [postprocess] {what}")
    return outputs[names[position]]


class DetectionTask:
    """SSD (Caffe PriorBox) or UltraFace decoding, VOC or COCO metrics."""

    def __init__(self, suite: Suite, class_names: Sequence[str], coco_category_ids: Sequence[int] = ()) -> None:
        post = suite.postprocess
        assert isinstance(post, (SsdPostprocess, UltrafacePostprocess)) and suite.metrics is not None
        self.post = post
        self.cfg = suite.metrics
        self.format = suite.data.format
        size = suite.preprocess.size
        if isinstance(post, SsdPostprocess):
            self.priors = prior_boxes(post.priors, image_size=size, clip=post.clip)
            self.background = post.background_label
        else:
            self.priors = ultraface_priors(size)
            self.background = 0
        self.class_names = tuple(class_names) if class_names else ("face",)
        self.coco_ids = tuple(coco_category_ids)
        self._metric = {side: self._new_metric() for side in ("fp32", "quantized")}

    def _new_metric(self) -> Any:
        if self.format == "coco":
            return CocoDetectionMetric()
        return VocAP(class_names=self.class_names, ap_method=self.cfg.ap_method, difficult=self.cfg.difficult,
                     iou_threshold=self.cfg.iou_threshold, pixel_plus_one=self.cfg.pixel_plus_one,
                     match_rule=self.cfg.match_rule)

    def detect(self, outputs: Outputs, meta: ImageMeta) -> Detections:
        """Detections of one image in original-image pixels (continuous xyxy), labels 0-based foreground."""
        post = self.post
        scores = _pick(outputs, post.scores_output, 0, "scores_output")[0]
        raw = _pick(outputs, post.boxes_output, 1, "boxes_output")[0]
        if raw.shape[-1] != 4:
            raise ConfigError(f"The boxes output has shape {list(raw.shape)}", expected="[..., 4] box coordinates",
                              remedy=f"name the outputs in [postprocess] boxes_output / scores_output (the model's "
                                     f"outputs: {list(outputs)})")
        if isinstance(post, SsdPostprocess):
            if post.score_activation == "softmax":
                scores = softmax(scores, axis=-1)
            elif post.score_activation == "sigmoid":
                scores = 1.0 / (1.0 + np.exp(-scores))
            boxes = decode_boxes(raw, self.priors, variances=post.variances)
            dets = multiclass_nms(boxes, scores, iou_threshold=post.iou_threshold,
                                  score_threshold=post.score_threshold, top_k=post.top_k,
                                  keep_top_k=post.keep_top_k, background_label=post.background_label)
        else:
            boxes = raw if raw.shape[-1] == 4 and _looks_decoded(raw) else decode_ultraface(raw, self.priors)
            dets = ultraface_detect(scores, boxes, score_threshold=post.score_threshold,
                                    iou_threshold=post.iou_threshold, top_k=post.top_k, keep_top_k=post.keep_top_k)
        labels = dets.labels
        if self.background is not None:
            labels = np.where(labels > self.background, labels - 1, labels)
        return Detections(meta.to_original(dets.boxes, normalized=True), dets.scores, labels.astype(np.int64))

    def update(self, index: int, sample: Sample[Any], fp32: Outputs, quant: Outputs, meta: ImageMeta) -> None:
        det = {"fp32": self.detect(fp32, meta), "quantized": self.detect(quant, meta)}
        if self.cfg.pseudo_ground_truth:
            ref = det["fp32"]
            keep = ref.scores >= self.cfg.pseudo_ground_truth_score_min
            gt_boxes, gt_labels = ref.boxes[keep], ref.labels[keep]
            difficult = np.zeros(len(gt_labels), bool)
            voc_boxes = False
        else:
            target = sample.target
            gt_boxes, gt_labels, difficult = target.boxes, target.labels, target.difficult
            voc_boxes = target.box_convention == "voc"
        for side, d in det.items():
            boxes = xyxy_to_voc(d.boxes) if voc_boxes else d.boxes
            if self.format == "coco":
                image_id = int(sample.image_id) if str(sample.image_id).isdigit() else index
                self._metric[side].update(image_id, gt_boxes, gt_labels, boxes, d.scores, d.labels,
                                          gt_iscrowd=None if self.cfg.pseudo_ground_truth else sample.target.crowd)
            else:
                self._metric[side].update(sample.image_id, gt_boxes, gt_labels, difficult, boxes, d.scores, d.labels)

    def probe_record(self, outputs: Outputs, meta: ImageMeta) -> list[dict[str, Any]]:
        d = self.detect(outputs, meta)
        keep = np.flatnonzero(d.scores >= _PROBE_SCORE_MIN)[:_PROBE_MAX_DETS]
        return [{"label": self._name(int(d.labels[i])), "score": float(d.scores[i]),
                 "box": [float(v) for v in d.boxes[i]]} for i in keep]

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def compute(self, bootstrap: Any) -> MetricsSummary:
        if self.format == "coco":
            values = {side: m.compute() for side, m in self._metric.items()}
            names = ("coco_ap", "coco_ap50", "coco_ap75")
            keys = {"coco_ap": "AP", "coco_ap50": "AP50", "coco_ap75": "AP75"}
            fp32 = {n: float(values["fp32"].get(keys[n], math.nan)) for n in names}
            quant = {n: float(values["quantized"].get(keys[n], math.nan)) for n in names}
            return MetricsSummary(headline=names[0], names=names, fp32=fp32, quantized=quant,
                                  difference={n: _difference(fp32[n], quant[n], None) for n in names},
                                  n_images=len(self._metric["fp32"]._images), class_names=self.class_names,
                                  per_class={})
        results = {side: m.compute() for side, m in self._metric.items()}
        stats = {side: m.stats() for side, m in self._metric.items()}
        boot = paired_bootstrap(stats["fp32"], stats["quantized"], n_resamples=bootstrap.n_resamples,
                                confidence=bootstrap.confidence, seed=bootstrap.seed)
        fp32, quant = {"map": float(results["fp32"].map)}, {"map": float(results["quantized"].map)}
        curves = {side: [_thin(np.asarray(r.recall[c]), np.asarray(r.precision[c])) for c in self.class_names]
                  for side, r in results.items()}
        return MetricsSummary(
            headline="map", names=("map",), fp32=fp32, quantized=quant,
            difference={"map": _difference(fp32["map"], quant["map"], boot)},
            n_images=results["fp32"].n_images, class_names=self.class_names,
            per_class={side: [float(r.ap[c]) for c in self.class_names] for side, r in results.items()},
            extra={"pr_curves": curves, "pseudo_ground_truth": self.cfg.pseudo_ground_truth})


def _looks_decoded(boxes: np.ndarray) -> bool:
    """UltraFace ships with and without its decoder; decoded boxes are corner form with x2 >= x1."""
    return bool(np.all(boxes[..., 2] >= boxes[..., 0]) and np.all(boxes[..., 3] >= boxes[..., 1])
                and np.abs(boxes).max() <= 4.0)


class ClassificationTask:
    """Top-k, per-class accuracy, confusion matrix and fp32/int8 top-1 agreement."""

    def __init__(self, suite: Suite, class_names: Sequence[str]) -> None:
        post = suite.postprocess
        assert isinstance(post, ClassifierPostprocess) and suite.metrics is not None
        self.post = post
        self.cfg = suite.metrics
        self.class_names = tuple(class_names)
        self._metric: dict[str, ClassificationMetric] | None = None
        self._agreement = Top1Agreement()

    def logits(self, outputs: Outputs) -> np.ndarray:
        return _pick(outputs, self.post.logits_output, 0, "logits_output").reshape(1, -1)

    def _metrics(self, num_classes: int) -> dict[str, ClassificationMetric]:
        if self._metric is None:
            n = len(self.class_names) or num_classes
            self._metric = {side: ClassificationMetric(num_classes=n, topk=self.cfg.topk)
                            for side in ("fp32", "quantized")}
        return self._metric

    def update(self, index: int, sample: Sample[Any], fp32: Outputs, quant: Outputs, meta: ImageMeta) -> None:
        a, b = self.logits(fp32), self.logits(quant)
        label = int(np.argmax(a)) if self.cfg.pseudo_ground_truth else int(sample.target)
        metrics = self._metrics(a.shape[1])
        metrics["fp32"].update(a, np.asarray([label]))
        metrics["quantized"].update(b, np.asarray([label]))
        self._agreement.update(a, b)

    def probe_record(self, outputs: Outputs, meta: ImageMeta) -> list[dict[str, Any]]:
        p = softmax(self.logits(outputs)[0].astype(np.float64))
        top = np.argsort(-p, kind="stable")[:5]
        return [{"label": self.class_names[i] if i < len(self.class_names) else str(i), "score": float(p[i])}
                for i in top]

    def compute(self, bootstrap: Any) -> MetricsSummary:
        metrics = self._metrics(len(self.class_names))
        results = {side: m.compute() for side, m in metrics.items()}
        stats = {side: m.stats() for side, m in metrics.items()}
        boot = paired_bootstrap(stats["fp32"], stats["quantized"], n_resamples=bootstrap.n_resamples,
                                confidence=bootstrap.confidence, seed=bootstrap.seed)
        names = (*(f"top{k}" for k in self.cfg.topk), "mean_class_accuracy")
        values = {side: {**{f"top{k}": float(r.topk[k]) for k in self.cfg.topk},
                         "mean_class_accuracy": float(r.mean_class_accuracy)} for side, r in results.items()}
        difference = {n: _difference(values["fp32"][n], values["quantized"][n], boot if n == "top1" else None)
                      for n in names}
        classes = self.class_names or tuple(str(i) for i in range(metrics["fp32"].num_classes))
        keep = reported_classes(results["fp32"].confusion, results["quantized"].confusion)
        extra: dict[str, Any] = {} if keep is None else {"class_indices": keep.tolist()}
        return MetricsSummary(
            headline="top1", names=names, fp32=values["fp32"], quantized=values["quantized"], difference=difference,
            n_images=results["fp32"].n_samples, class_names=tuple(classes[i] for i in _all_or(keep, len(classes))),
            per_class={side: [float(r.per_class_accuracy[i]) for i in _all_or(keep, len(classes))]
                       for side, r in results.items()},
            extra={"confusion": {side: _confusion_rows(r.confusion, keep) for side, r in results.items()},
                   "agreement": float(self._agreement.compute()),
                   "pseudo_ground_truth": self.cfg.pseudo_ground_truth, **extra})


#: Above this many classes, results list only the classes that occur (as a label or a prediction, either side):
#: ImageNet's 1000 classes would put two 1000 x 1000 confusion matrices (20 MB of JSON) in every results file.
MAX_LISTED_CLASSES = 50


def reported_classes(*confusions: np.ndarray) -> np.ndarray | None:
    """Indices of the classes to report, or None for all of them."""
    if confusions[0].shape[0] <= MAX_LISTED_CLASSES:
        return None
    seen = np.zeros(confusions[0].shape[0], dtype=bool)
    for c in confusions:
        seen |= (c.sum(axis=0) > 0) | (c.sum(axis=1) > 0)
    return np.flatnonzero(seen)


def _all_or(keep: np.ndarray | None, n: int) -> Sequence[int]:
    return range(n) if keep is None else keep.tolist()


def _confusion_rows(confusion: np.ndarray, keep: np.ndarray | None) -> list[list[int]]:
    return (confusion if keep is None else confusion[np.ix_(keep, keep)]).astype(int).tolist()


def make_task(suite: Suite, class_names: Sequence[str], coco_category_ids: Sequence[int] = ()) -> Any:
    """The adapter for ``suite.task`` (None for ``layers`` suites)."""
    if suite.task == "detection":
        return DetectionTask(suite, class_names, coco_category_ids)
    if suite.task == "classification":
        return ClassificationTask(suite, class_names)
    return None
