"""NMS (properties + cv2.dnn.NMSBoxes cross-check), class-wise NMS, and classification post-processing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.tasks.classification import argmax, softmax, top_k
from harness.tasks.nms import Detections, batched_multiclass_nms, iou_matrix, multiclass_nms, nms


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 80, size=(n, 2))
    wh = rng.uniform(1, 30, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


@st.composite
def _problems(draw):
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, n)
    # Few distinct score values on purpose: ties must be handled deterministically.
    scores = rng.choice(np.linspace(0.05, 1.0, 12), size=n).astype(np.float32)
    iou = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
    return boxes, scores, iou


@settings(max_examples=80, deadline=None)
@given(_problems(), st.sampled_from([None, 0.3]), st.sampled_from([None, 5]))
def test_nms_properties(problem, score_threshold, top_k_):
    boxes, scores, iou = problem
    keep = nms(boxes, scores, iou_threshold=iou, score_threshold=score_threshold, top_k=top_k_)
    assert keep.dtype == np.int64 and len(set(keep.tolist())) == keep.size  # a subset, no repeats
    assert np.all(np.diff(scores[keep]) <= 0)  # sorted by score
    if score_threshold is not None:
        assert np.all(scores[keep] > score_threshold)
    if top_k_ is not None:
        assert keep.size <= top_k_
    if keep.size > 1:
        overlaps = iou_matrix(boxes[keep], boxes[keep])
        np.fill_diagonal(overlaps, 0)
        assert overlaps.max() <= iou + 1e-12  # no two kept boxes overlap above the threshold
    # Greedy maximality: every dropped candidate overlaps a kept box with a higher-or-equal score.
    candidates = np.arange(len(scores)) if score_threshold is None else np.flatnonzero(scores > score_threshold)
    if top_k_ is None and keep.size:
        dropped = np.setdiff1d(candidates, keep)
        if dropped.size:
            ov = iou_matrix(boxes[dropped], boxes[keep])
            better = scores[keep][None, :] >= scores[dropped][:, None]
            assert np.all(np.any((ov > iou) & better, axis=1))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.3, 0.45, 0.6]))
def test_nms_agrees_with_cv2_dnn_nmsboxes(seed, iou):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 30)
    scores = rng.uniform(0, 1, size=30).astype(np.float32)  # distinct scores: tie order is cv2's business
    ours = nms(boxes, scores, iou_threshold=iou, score_threshold=0.2)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    theirs = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.2, iou), dtype=np.int64).reshape(-1)
    assert ours.tolist() == theirs.tolist()


def test_equal_iou_is_kept_and_ties_prefer_lower_index():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10]], float)  # IoU(0, 2) = 1/3
    scores = np.array([0.9, 0.9, 0.8])
    assert nms(boxes, scores, iou_threshold=0.5).tolist() == [0, 2]
    assert nms(boxes, scores, iou_threshold=1 / 3).tolist() == [0, 2]  # exactly at threshold: kept
    assert nms(boxes, scores, iou_threshold=0.3).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), iou_threshold=0.5).size == 0


def test_multiclass_nms_is_class_wise_skips_background_and_applies_keep_top_k():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array(
        [
            [0.1, 0.9, 0.8],  # background, class 1, class 2
            [0.1, 0.7, 0.05],
            [0.9, 0.02, 0.6],
        ],
        np.float32,
    )
    det = multiclass_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.1)
    # class 1: box 1 suppressed by box 0; class 2: the same box 0 survives, overlapping across classes is fine.
    assert det.labels.tolist() == [1, 2, 2] and det.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert det.boxes.tolist() == [boxes[0].tolist(), boxes[0].tolist(), boxes[2].tolist()]
    assert len(multiclass_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.1, keep_top_k=2)) == 2
    with_bg = multiclass_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.5, background_label=None)
    assert 0 in with_bg.labels.tolist()


def test_multiclass_nms_per_class_boxes_and_batch():
    boxes = np.zeros((2, 3, 4))
    boxes[:, 1] = [[0, 0, 5, 5], [20, 20, 30, 30]]
    boxes[:, 2] = [[0, 0, 5, 5], [0, 0, 5, 5]]
    scores = np.array([[0, 0.9, 0.8], [0, 0.7, 0.6]], np.float32)
    det = multiclass_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.1)
    assert det.labels.tolist() == [1, 2, 1]
    assert det.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    batch = batched_multiclass_nms(np.stack([boxes, boxes]), np.stack([scores, scores * 0]), iou_threshold=0.5)
    assert len(batch[0]) == 3 and len(batch[1]) == 0 and isinstance(batch[1], Detections)
    with pytest.raises(ValueError):
        multiclass_nms(np.zeros((3, 4)), np.zeros((4, 2)))


def test_iou_matrix_reference_values():
    a = np.array([[0, 0, 2, 2], [0, 0, 0, 0]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 7, 1, 0], [0, 0, 0]])


# --- classification -------------------------------------------------------------------------------
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 20)), elements=st.floats(-1e4, 1e4, width=32)))
def test_softmax_is_stable_normalised_and_order_preserving(logits):
    p = softmax(logits)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=-1), 1, atol=1e-5)
    assert np.array_equal(argmax(p), argmax(logits)) or np.any(np.sort(p, axis=-1)[:, -1] == np.sort(p, axis=-1)[:, -2])


def test_softmax_large_logits_do_not_overflow():
    np.testing.assert_allclose(softmax(np.array([1000.0, 1000.0, -1000.0])), [0.5, 0.5, 0.0], atol=1e-7)


def test_top_k_sorted_and_ties_to_lower_index():
    scores = np.array([[0.1, 0.5, 0.5, 0.3], [0.9, 0.0, 0.2, 0.2]])
    idx, val = top_k(scores, 3)
    assert idx.tolist() == [[1, 2, 3], [0, 2, 3]]
    np.testing.assert_array_equal(val, [[0.5, 0.5, 0.3], [0.9, 0.2, 0.2]])
    assert argmax(scores).tolist() == idx[:, 0].tolist()
    with pytest.raises(ValueError):
        top_k(scores, 5)
