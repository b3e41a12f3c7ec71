"""Classification post-processing: softmax, argmax, top-k.

Ties are broken by the lower class index everywhere (stable sorts), matching ``np.argmax`` so that
top-1 from :func:`top_k` and :func:`argmax` always agree, even for an int8 model whose quantized logits tie.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracting the max keeps exp from overflowing for logits ~ 1e3)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float32)


def argmax(scores: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Index of the highest score (first one on ties)."""
    return np.argmax(np.asarray(scores), axis=axis).astype(np.int64)


def top_k(scores: np.ndarray, k: int, *, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the ``k`` highest scores along ``axis``, highest first."""
    s = np.asarray(scores)
    if not 1 <= k <= s.shape[axis]:
        raise ValueError(f"k must be in 1..{s.shape[axis]}, got {k}")
    order = np.argsort(-s, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return idx.astype(np.int64), np.take_along_axis(s, idx, axis=axis)
