"""Greedy non-maximum suppression, per class, with Caffe ``DetectionOutput`` semantics.

Per class: keep scores ``> score_threshold``, take the ``top_k`` highest, then greedily keep the best box and
drop every remaining box whose IoU with it is ``> iou_threshold`` (Caffe ``ApplyNMSFast`` and
``cv2.dnn.NMSBoxes`` both keep a box whose overlap equals the threshold). After all classes, keep the
``keep_top_k`` highest detections overall. IoU uses continuous coordinates (no +1), as Caffe's normalised
boxes do.

Ties in score are broken by the lower prior index (a stable sort), so results are reproducible across
numpy versions and platforms; fp32 and int8 runs are then compared on the same footing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one image, sorted by descending score: ``boxes`` [K, 4] corner form (same units as the
    input boxes), ``scores`` [K] float32, ``labels`` [K] int64 class index (model output column)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [N, M] of corner boxes ``a`` [N, 4] and ``b`` [M, 4] (0 where the union is empty)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    lt = np.maximum(a[:, None, 0:2], b[None, :, 0:2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:4] - a[:, 0:2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:4] - b[:, 0:2], 0.0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    iou_threshold: float,
    score_threshold: float | None = None,
    top_k: int | None = None,
) -> np.ndarray:
    """Indices (int64, into ``boxes``) of the boxes kept by greedy NMS, by descending score.

    ``score_threshold`` keeps ``score > threshold``; ``top_k`` limits the candidates before suppression.
    """
    scores = np.asarray(scores).reshape(-1)
    candidates = np.arange(scores.shape[0])
    if score_threshold is not None:
        candidates = candidates[scores > score_threshold]
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k is not None and top_k >= 0:
        order = order[:top_k]
    if order.size == 0:
        return np.zeros(0, dtype=np.int64)
    # One IoU matrix among the candidates (top_k bounds it), then a cheap boolean sweep in score order.
    overlaps = iou_matrix(np.asarray(boxes)[order], np.asarray(boxes)[order])
    suppressed = np.zeros(order.size, dtype=bool)
    keep = []
    for i in range(order.size):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)].astype(np.int64)


def multiclass_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    iou_threshold: float = 0.45,
    score_threshold: float = 0.01,
    top_k: int | None = 400,
    keep_top_k: int | None = 200,
    background_label: int | None = 0,
) -> Detections:
    """Class-wise NMS for one image.

    ``boxes`` is [P, 4] (shared by all classes, SSD) or [P, C, 4] (per-class boxes); ``scores`` is [P, C]
    (after softmax/sigmoid). ``background_label`` names the column to skip (``None`` when there is none).
    Defaults are Caffe SSD's VOC settings.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if scores.ndim != 2 or boxes.shape[0] != scores.shape[0] or boxes.shape[-1] != 4:
        raise ValueError(f"expected boxes [P, 4] or [P, C, 4] and scores [P, C], got {boxes.shape} and {scores.shape}")
    per_class_boxes = boxes.ndim == 3
    kept_boxes, kept_scores, kept_labels = [], [], []
    for c in range(scores.shape[1]):
        if c == background_label:
            continue
        class_boxes = boxes[:, c] if per_class_boxes else boxes
        keep = nms(class_boxes, scores[:, c], iou_threshold=iou_threshold, score_threshold=score_threshold, top_k=top_k)
        kept_boxes.append(class_boxes[keep])
        kept_scores.append(scores[keep, c])
        kept_labels.append(np.full(keep.size, c, dtype=np.int64))
    if not kept_scores:
        return Detections.empty()
    all_scores = np.concatenate(kept_scores).astype(np.float32)
    # Stable sort on the class-ordered concatenation: equal scores stay in class order.
    order = np.argsort(-all_scores, kind="stable")
    if keep_top_k is not None and keep_top_k >= 0:
        order = order[:keep_top_k]
    return Detections(
        boxes=np.concatenate(kept_boxes)[order].astype(np.float32),
        scores=all_scores[order],
        labels=np.concatenate(kept_labels)[order],
    )


def batched_multiclass_nms(boxes: np.ndarray, scores: np.ndarray, **options: object) -> list[Detections]:
    """:func:`multiclass_nms` over a batch: ``boxes`` [N, P, 4] or [N, P, C, 4], ``scores`` [N, P, C]."""
    return [multiclass_nms(b, s, **options) for b, s in zip(boxes, scores)]  # type: ignore[arg-type]
