"""Classification metrics: top-k accuracy, per-class accuracy, confusion matrix, fp32/int8 agreement.

All values are fractions in [0, 1] (not percent). Streaming state is per sample -- the rank of the
true class and the top-1 prediction -- because that is also what a paired bootstrap over images
needs; a few bytes per image.

Ties between logits: the class with the lower index ranks first (a stable descending sort), so
``argmax`` and top-k agree and results do not depend on the sort implementation. The true label's
rank is ``#{logit > l_true} + #{logit == l_true and index < label}``; top-k is ``rank < k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from harness.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class ClassificationResult:
    topk: dict[int, float]  # k -> accuracy (fraction)
    per_class_accuracy: np.ndarray  # [C], NaN for classes without samples
    mean_class_accuracy: float  # mean over classes with samples
    confusion: np.ndarray  # [C, C], rows = true class, columns = top-1 prediction
    n_samples: int

    @property
    def top1(self) -> float:
        return self.topk[1]


class ClassificationMetric:
    """Streaming top-k / per-class / confusion metric over ``[N, C]`` logits and ``[N]`` labels."""

    def __init__(self, *, num_classes: int, topk: Sequence[int] = (1, 5)) -> None:
        if num_classes < 1 or any(k < 1 for k in topk):
            raise ConfigError(f"Got num_classes={num_classes}, topk={tuple(topk)}",
                              expected="num_classes >= 1 and every k >= 1")
        self.num_classes = int(num_classes)
        self.topk = tuple(sorted({int(k) for k in topk} | {1}))
        self.reset()

    def reset(self) -> None:
        self._ranks: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._preds: list[np.ndarray] = []

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        scores = _logits(logits, self.num_classes)
        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != scores.shape[0]:
            raise DataError(f"Got {lab.shape[0]} labels for {scores.shape[0]} logit rows",
                            expected="one label per row")
        if lab.size and (lab.dtype.kind not in "iu" or lab.min() < 0 or lab.max() >= self.num_classes):
            raise DataError(f"Labels outside [0, {self.num_classes})", expected="integer class indices")
        lab = lab.astype(np.int64)
        true = scores[np.arange(lab.size), lab][:, None]
        before = np.arange(self.num_classes)[None, :] < lab[:, None]
        rank = (scores > true).sum(axis=1) + ((scores == true) & before).sum(axis=1)
        self._ranks.append(rank.astype(np.int64))
        self._labels.append(lab)
        self._preds.append(np.argmax(scores, axis=1).astype(np.int64))  # first max = lowest index

    def merge(self, other: "ClassificationMetric") -> "ClassificationMetric":
        if other.num_classes != self.num_classes:
            raise ConfigError(f"Cannot merge {other.num_classes}-class metric into {self.num_classes}-class one",
                              expected="the same number of classes")
        self._ranks += other._ranks
        self._labels += other._labels
        self._preds += other._preds
        return self

    def stats(self) -> "ClassificationStats":
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        return ClassificationStats(rank=cat(self._ranks), label=cat(self._labels), pred=cat(self._preds),
                                   num_classes=self.num_classes, topk=self.topk)

    def compute(self, *, sample_weights: np.ndarray | None = None) -> ClassificationResult:
        return self.stats().compute(sample_weights=sample_weights)


@dataclass(frozen=True, eq=False)
class ClassificationStats:
    """Per-sample statistics; ``value_on(weights)`` is weighted top-1 (bootstrap entry point)."""

    rank: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    num_classes: int
    topk: tuple[int, ...] = (1, 5)

    @property
    def n_images(self) -> int:
        return int(self.rank.shape[0])

    def value_on(self, weights: np.ndarray) -> float:
        weights = np.asarray(weights, dtype=np.float64)
        total = weights.sum()
        return float(weights @ (self.rank == 0) / total) if total > 0 else float("nan")

    def compute(self, *, sample_weights: np.ndarray | None = None) -> ClassificationResult:
        n = self.n_images
        w = np.ones(n) if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)
        total = w.sum()
        topk = {k: (float(w @ (self.rank < k) / total) if total > 0 else float("nan")) for k in self.topk}
        C = self.num_classes
        confusion = np.bincount(self.label * C + self.pred, weights=w, minlength=C * C).reshape(C, C)
        per_class_n = confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(per_class_n > 0, np.diag(confusion) / per_class_n, np.nan)
        seen = per_class_n > 0
        mean_class = float(per_class[seen].mean()) if seen.any() else float("nan")
        if sample_weights is None:
            confusion = confusion.astype(np.int64)
        return ClassificationResult(topk=topk, per_class_accuracy=per_class, mean_class_accuracy=mean_class,
                                    confusion=confusion, n_samples=n)


class Top1Agreement:
    """Fraction of samples where fp32 and int8 top-1 predictions agree (no labels needed).

    Why it exists next to accuracy: on a few hundred probe images a 0.3% accuracy change is noise,
    but a 5% prediction flip rate is a clear signal that quantization changed the model.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._agree: list[np.ndarray] = []

    def update(self, logits_a: np.ndarray, logits_b: np.ndarray) -> None:
        a = np.asarray(logits_a, dtype=np.float64)
        b = np.asarray(logits_b, dtype=np.float64)
        if a.ndim != 2 or a.shape != b.shape:
            raise DataError(f"Got logits of shapes {a.shape} and {b.shape}", expected="two equal [N, C] arrays")
        self._agree.append(np.argmax(a, axis=1) == np.argmax(b, axis=1))

    def merge(self, other: "Top1Agreement") -> "Top1Agreement":
        self._agree += other._agree
        return self

    @property
    def per_sample(self) -> np.ndarray:
        return np.concatenate(self._agree) if self._agree else np.zeros(0, bool)

    def compute(self) -> float:
        agree = self.per_sample
        return float(agree.mean()) if agree.size else float("nan")


def _logits(logits: np.ndarray, num_classes: int) -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != num_classes:
        raise DataError(f"Got logits of shape {arr.shape}", expected=f"[N, {num_classes}]")
    if np.isnan(arr).any():
        raise DataError("Logits contain NaN", expected="finite scores", remedy="check the model output")
    return arr
