"""Engine-level task helpers: which classes a classification summary lists."""

from __future__ import annotations

import numpy as np

from harness.engine.task import MAX_LISTED_CLASSES, reported_classes


def test_few_classes_are_all_listed() -> None:
    c = np.zeros((MAX_LISTED_CLASSES, MAX_LISTED_CLASSES), dtype=np.int64)
    assert reported_classes(c, c) is None


def test_many_classes_list_only_those_seen_as_label_or_prediction_on_either_side() -> None:
    n = 1000
    fp32, quant = np.zeros((n, n), dtype=np.int64), np.zeros((n, n), dtype=np.int64)
    fp32[285, 285] = 1          # label 285, fp32 predicted it
    quant[285, 281] = 1         # int8 predicted 281 for it
    fp32[540, 540] = quant[540, 682] = 1
    assert reported_classes(fp32, quant).tolist() == [281, 285, 540, 682]


# --- the task adapters, on outputs built by hand -------------------------------------------------------
from pathlib import Path  # noqa: E402

from harness.data import ImageMeta  # noqa: E402
from harness.engine.task import ClassificationTask, DetectionTask  # noqa: E402
from harness.suite import load_suite  # noqa: E402

SUITES = Path(__file__).resolve().parents[1] / "suites"
META = ImageMeta(original_size=(320, 160), input_size=(160, 160), scale=(0.5, 1.0), offset=(0.0, 0.0))


def _detector() -> DetectionTask:
    suite = load_suite(SUITES / "detector_ncnn_int8.toml")
    return DetectionTask(suite, ("circle", "cross", "ring", "square", "star", "triangle"))


def _ssd_outputs(task: DetectionTask, hits: dict[int, tuple[int, float]]) -> dict[str, np.ndarray]:
    """Class probabilities (the detector's output is already softmax) and zero box deltas: a hit at prior p
    decodes to exactly that prior."""
    n = len(task.priors)
    probs = np.zeros((1, n, 7), np.float32)
    probs[0, :, 0] = 1.0  # background everywhere
    for prior, (cls, score) in hits.items():
        probs[0, prior, 0] = 1.0 - score
        probs[0, prior, cls] = score
    return {"scores": probs, "boxes": np.zeros((1, n, 4), np.float32)}


def test_detector_adapter_decodes_drops_background_and_maps_to_the_original_image() -> None:
    task = _detector()
    p = 100
    dets = task.detect(_ssd_outputs(task, {p: (3, 0.9)}), META)
    assert len(dets.labels) == 1 and dets.labels[0] == 2  # class 3 of 7 with background 0 -> "ring" (index 2)
    prior = task.priors[p]  # centre form (cx, cy, w, h), fractions of the input
    cx, cy, w, h = (float(v) for v in prior)
    expected = [(cx - w / 2) * 160 / 0.5, (cy - h / 2) * 160, (cx + w / 2) * 160 / 0.5, (cy + h / 2) * 160]
    assert np.allclose(dets.boxes[0], np.clip(expected, 0, [320, 160, 320, 160]), atol=1e-3)
    assert dets.scores[0] == np.float32(0.9)


def test_detector_adapter_honours_the_suite_score_threshold() -> None:
    task = _detector()
    threshold = task.post.score_threshold
    # kept just above the suite's threshold (a raised threshold in the adapter, issue 13's fp32 regression,
    # drops it), dropped just below
    dets = task.detect(_ssd_outputs(task, {10: (1, 0.9), 20: (2, threshold / 2), 30: (4, threshold * 2)}), META)
    assert sorted(dets.labels.tolist()) == [0, 3] and (dets.scores >= threshold).all()


def test_classification_adapter_scores_both_sides_on_the_same_labels() -> None:
    suite = load_suite(SUITES / "classifier_ncnn_int8.toml")
    task = ClassificationTask(suite, tuple(str(i) for i in range(12)))

    class Sample:
        def __init__(self, target: int) -> None:
            self.target = target

    for i, (label, fp32, quant) in enumerate([(0, 0, 0), (1, 1, 2), (2, 2, 2), (3, 4, 4)]):
        a = np.full((1, 12), -5.0, np.float32)
        b = a.copy()
        a[0, fp32] = b[0, quant] = 5.0
        task.update(i, Sample(label), {"logits": a}, {"logits": b}, META)
    m = task.compute(suite.metrics.bootstrap)
    assert m.fp32["top1"] == 0.75 and m.quantized["top1"] == 0.5
    assert m.extra["agreement"] == 0.75 and m.difference["top1"]["value"] == 0.25
