"""Per-tensor comparison statistics, accumulated in a streaming way.

Why streaming: a layerwise comparison sees every tensor of every probe image; keeping them all
costs tens of MB per image. ``TensorStats`` keeps only float64 sufficient statistics
(sum xy, sum xx, sum yy, sum (x-y)^2, sum |x-y|, max |x-y|, count, reference range), so
``update`` over images, or ``merge`` of shards, gives the same result as one pass over the
concatenated tensors (up to float64 summation order, about 1e-12 relative).

Conventions (``x`` = reference, ``y`` = test; all metrics over the *finite* element pairs):

* ``cosine`` is of the flattened tensors. Identical tensors give exactly 1. Both all-zero: 1 by
  convention (nothing differs; a gate on a dead ReLU output must not fail). One side all-zero and
  the other not: 0 (no direction in common).
* ``euclid_similarity`` is tpu-mlir's ``1 - ||x-y|| / ||(x+y)/2||``. Both zero: 1. ``x = -y``
  (denominator 0, numerator > 0): ``-inf``.
* ``sqnr_db = 20 log10(||x|| / ||x-y||)``: ``+inf`` when there is no error at all (also for two
  zero tensors), ``-inf`` when the reference is zero and the test is not.
* ``nmse = ||x-y||^2 / ||x||^2``: 0 without error, ``+inf`` for a zero reference with error.
* NaN / Inf in either input are *not* propagated into the metrics: the pair is skipped and counted
  in ``nonfinite_count``, so a report shows "3 non-finite values" instead of a column of NaN.
  ``raise_if_nonfinite`` turns that count into a ``NumericError`` naming the tensor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.errors import NumericError

__all__ = [
    "TensorStats",
    "TensorStatsResult",
    "BmrtResult",
    "NonfiniteCount",
    "BMRT_FLOOR",
    "bmrt_allclose",
    "bmrt_errors",
    "count_nonfinite",
    "raise_if_nonfinite",
    "tensor_stats",
]


@dataclass(frozen=True)
class TensorStatsResult:
    """Statistics of one tensor pair. Units are in the names (``sqnr_db``); the rest are unitless
    or in the tensor's own units (``mae``, ``max_abs_error``, ``ref_min``...)."""

    count: int
    nonfinite_count: int
    cosine: float
    euclid_similarity: float
    sqnr_db: float
    nmse: float
    mae: float
    max_abs_error: float
    max_abs_error_index: int  # flat index in the stream of elements seen (-1 when count == 0)
    ref_min: float
    ref_max: float
    ref_mean: float
    ref_std: float
    ref_absmax: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def has_nonfinite(self) -> bool:
        return self.nonfinite_count > 0


class TensorStats:
    """Streaming accumulator: ``update(ref, test)`` any number of times, ``merge`` shards,
    ``compute()`` the result. Inputs of any float dtype/shape; they are flattened and compared
    element by element (the shapes must have the same number of elements)."""

    def __init__(self) -> None:
        self.count_ = 0
        self.nonfinite_count_ = 0
        self.sum_xy_ = 0.0
        self.sum_xx_ = 0.0
        self.sum_yy_ = 0.0
        self.sum_x_ = 0.0
        self.sum_d2_ = 0.0
        self.sum_abs_d_ = 0.0
        self.max_abs_d_ = 0.0
        self.max_abs_d_index_ = -1
        self.ref_min_ = math.inf
        self.ref_max_ = -math.inf
        self.elements_seen_ = 0  # finite or not; the basis of max_abs_d_index_

    def update(self, ref: np.ndarray, test: np.ndarray) -> TensorStats:
        x = np.asarray(ref, dtype=np.float64).ravel()
        y = np.asarray(test, dtype=np.float64).ravel()
        if x.size != y.size:
            raise ValueError(f"reference has {x.size} elements, test has {y.size}")
        finite = np.isfinite(x) & np.isfinite(y)
        offset = self.elements_seen_
        self.elements_seen_ += x.size
        n_bad = int(x.size - np.count_nonzero(finite))
        if n_bad:
            self.nonfinite_count_ += n_bad
            idx = np.flatnonzero(finite)
            x, y = x[idx], y[idx]
        else:
            idx = None
        if x.size == 0:
            return self
        d = x - y
        abs_d = np.abs(d)
        self.count_ += x.size
        self.sum_xy_ += float(np.dot(x, y))
        self.sum_xx_ += float(np.dot(x, x))
        self.sum_yy_ += float(np.dot(y, y))
        self.sum_x_ += float(x.sum())
        self.sum_d2_ += float(np.dot(d, d))
        self.sum_abs_d_ += float(abs_d.sum())
        j = int(np.argmax(abs_d))
        if abs_d[j] > self.max_abs_d_ or self.max_abs_d_index_ < 0:
            self.max_abs_d_ = float(abs_d[j])
            self.max_abs_d_index_ = offset + (int(idx[j]) if idx is not None else j)
        self.ref_min_ = min(self.ref_min_, float(x.min()))
        self.ref_max_ = max(self.ref_max_, float(x.max()))
        return self

    def merge(self, other: TensorStats) -> TensorStats:
        """Fold ``other`` (a later shard of the same stream) into ``self``."""
        if other.max_abs_d_index_ >= 0 and (other.max_abs_d_ > self.max_abs_d_ or self.max_abs_d_index_ < 0):
            self.max_abs_d_ = other.max_abs_d_
            self.max_abs_d_index_ = self.elements_seen_ + other.max_abs_d_index_
        for attr in ("count_", "nonfinite_count_", "sum_xy_", "sum_xx_", "sum_yy_", "sum_x_", "sum_d2_",
                     "sum_abs_d_", "elements_seen_"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        self.ref_min_ = min(self.ref_min_, other.ref_min_)
        self.ref_max_ = max(self.ref_max_, other.ref_max_)
        return self

    def compute(self) -> TensorStatsResult:
        n = self.count_
        xx, yy, xy, d2 = self.sum_xx_, self.sum_yy_, self.sum_xy_, self.sum_d2_
        if n == 0:
            nan = math.nan
            return TensorStatsResult(0, self.nonfinite_count_, nan, nan, nan, nan, nan, nan, -1,
                                     nan, nan, nan, nan, nan)
        return TensorStatsResult(
            count=n,
            nonfinite_count=self.nonfinite_count_,
            cosine=_cosine(xx, yy, xy, d2),
            euclid_similarity=_euclid(xx, yy, xy, d2),
            sqnr_db=_sqnr_db(xx, d2),
            nmse=(0.0 if d2 == 0 else (math.inf if xx == 0 else d2 / xx)),
            mae=self.sum_abs_d_ / n,
            max_abs_error=self.max_abs_d_,
            max_abs_error_index=self.max_abs_d_index_,
            ref_min=self.ref_min_,
            ref_max=self.ref_max_,
            ref_mean=self.sum_x_ / n,
            ref_std=math.sqrt(max(xx / n - (self.sum_x_ / n) ** 2, 0.0)),
            ref_absmax=max(abs(self.ref_min_), abs(self.ref_max_)),
        )


def tensor_stats(ref: np.ndarray, test: np.ndarray) -> TensorStatsResult:
    """One-shot convenience: ``TensorStats().update(ref, test).compute()``."""
    return TensorStats().update(ref, test).compute()


def _cosine(xx: float, yy: float, xy: float, d2: float) -> float:
    if d2 == 0.0:
        return 1.0  # identical, including both all-zero (documented convention)
    if xx == 0.0 or yy == 0.0:
        return 0.0
    # sqrt(xx * yy) rather than sqrt(xx) * sqrt(yy): identical inputs then give exactly 1.
    return max(-1.0, min(1.0, xy / math.sqrt(xx * yy)))


def _euclid(xx: float, yy: float, xy: float, d2: float) -> float:
    if d2 == 0.0:
        return 1.0
    half_sum_sq = max((xx + 2.0 * xy + yy) / 4.0, 0.0)
    if half_sum_sq == 0.0:
        return -math.inf
    return 1.0 - math.sqrt(d2) / math.sqrt(half_sum_sq)


def _sqnr_db(xx: float, d2: float) -> float:
    if d2 == 0.0:
        return math.inf
    if xx == 0.0:
        return -math.inf
    return 10.0 * math.log10(xx / d2)  # == 20 log10(||x|| / ||x - y||)


@dataclass(frozen=True)
class NonfiniteCount:
    """NaN and Inf in one array, and the coordinates of the first one (C order), None when all are finite."""

    nan: int
    inf: int
    first: tuple[int, ...] | None

    @property
    def total(self) -> int:
        return self.nan + self.inf


def count_nonfinite(values: np.ndarray) -> NonfiniteCount:
    """NaN/Inf of ``values``; integer and boolean arrays are finite by construction."""
    a = np.asarray(values)
    if not np.issubdtype(a.dtype, np.inexact):
        return NonfiniteCount(0, 0, None)
    bad = ~np.isfinite(a)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return NonfiniteCount(0, 0, None)
    n_nan = int(np.count_nonzero(np.isnan(a)))
    first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape))
    return NonfiniteCount(n_nan, n_bad - n_nan, first)


def raise_if_nonfinite(name: str, result: TensorStatsResult, *, side: str = "reference or test") -> None:
    """Raise ``NumericError`` naming ``name`` when the comparison skipped non-finite values."""
    if result.nonfinite_count:
        raise NumericError(
            f"Tensor {name!r} holds {result.nonfinite_count} NaN/Inf value(s) in the {side}",
            expected="finite activations in both the fp32 and the quantized model",
            remedy="check the input preprocessing and the scales of the layers feeding this tensor",
        )


# --- bmrt_test's float comparison ---------------------------------------------------------------
#: The smallest denominator of the relative error (see ``bmrt_allclose``).
BMRT_FLOOR = 1.0


@dataclass(frozen=True)
class BmrtResult:
    """bmrt_test ``cmp`` verdict, Polygraphy style: truthy when it passes, and it states the least
    tolerance that would have passed (``min_passing_tolerance``). The worst element is given both as a
    flat index and as coordinates of the compared array (axis 0 is the probe image when the caller stacks
    one image per row, as the ``outputs`` check does)."""

    tolerance: float
    violations: int
    total: int
    worst_index: tuple[int, ...] | None
    worst_ref: float
    worst_test: float
    worst_error: float
    min_passing_tolerance: float
    worst_flat_index: int = -1
    nonfinite: int = 0  # elements that are NaN/Inf on either side (and not equal): each one fails
    floor: float = BMRT_FLOOR

    @property
    def passed(self) -> bool:
        return self.violations == 0

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        if self.total == 0:
            return "bmrt: no elements"
        head = f"bmrt tol={self.tolerance:g}: {self.violations}/{self.total} elements exceed"
        text = (f"{head}; worst at element {self.worst_flat_index} {self.worst_index}: ref={self.worst_ref:g} "
                f"test={self.worst_test:g} error={self.worst_error:g}; would pass with tol >= "
                f"{self.min_passing_tolerance:g}")
        if self.nonfinite:
            text += f"; {self.nonfinite} elements are NaN/Inf"
        return text


def bmrt_errors(ref: np.ndarray, test: np.ndarray, *, floor: float = BMRT_FLOOR) -> np.ndarray:
    """Per-element error of bmrt_test's float rule with an absolute floor (float64, ``ref``'s shape).

    bmrt_test: if ``max(|a|,|b|) > 1`` the error is relative, ``|a-b| / min(|a|,|b|)``, else absolute
    ``|a-b|``. Taken literally, a pair with one side above 1 and the other near zero (or of the other sign)
    divides by that near-zero magnitude. MobileNetV2's fp32 logits against its ncnn-int8 simulation on the 16
    evaluation photos: rocket.jpg's worst logit is 1.1375 vs -0.0004, error 2545; 24.jpg's 1.3732 vs -0.0031,
    440.8; on every photo at least 989 of 1000 logits are within 40, so one near-zero logit decides the verdict.
    The rule's own switch says magnitudes up to 1 are judged on the absolute scale, so the denominator is
    ``max(min(|a|,|b|), floor)``. With ``floor = 1`` (the default, the switch point) the rule is continuous:
    at ``max(|a|,|b|) = 1`` both branches give ``|a-b|``, and the error is never larger than ``|a-b|``.
    Pairs with both magnitudes >= ``floor`` are exactly bmrt_test's relative error; pairs with both <= 1 its
    absolute error. NaN on either side is an infinite error; equal values (also equal infinities) are 0.
    """
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    if a.size != b.size:
        raise ValueError(f"reference has {a.size} elements, test has {b.size}")
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    b = b.reshape(a.shape)
    with np.errstate(invalid="ignore"):  # inf - inf, NaN: handled below
        diff = np.abs(a - b)
        big = np.maximum(np.abs(a), np.abs(b)) > 1.0
        err = np.where(big, diff / np.maximum(np.minimum(np.abs(a), np.abs(b)), floor), diff)
    err = np.where(np.isnan(err), np.inf, err)  # NaN on a side, or inf - inf
    return np.where(a == b, 0.0, err)


def bmrt_allclose(ref: np.ndarray, test: np.ndarray, *, tol: float = 0.01, floor: float = BMRT_FLOOR) -> BmrtResult:
    """bmrt_test's float comparison (:func:`bmrt_errors`); an element fails when its error > ``tol``.
    The worst element (first one in C order on ties) is reported with both values."""
    err = bmrt_errors(ref, test, floor=floor)
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64).reshape(a.shape)
    if a.size == 0:
        return BmrtResult(tol, 0, 0, None, math.nan, math.nan, 0.0, 0.0, floor=floor)
    worst_flat = int(np.argmax(err))
    worst = np.unravel_index(worst_flat, a.shape)
    nonfinite = int(np.count_nonzero(~(np.isfinite(a) & np.isfinite(b)) & (a != b)))
    return BmrtResult(
        tolerance=tol,
        violations=int(np.count_nonzero(err > tol)),
        total=int(a.size),
        worst_index=tuple(int(i) for i in worst),
        worst_ref=float(a[worst]),
        worst_test=float(b[worst]),
        worst_error=float(err[worst]),
        min_passing_tolerance=float(err[worst]),
        worst_flat_index=worst_flat,
        nonfinite=nonfinite,
        floor=floor,
    )
