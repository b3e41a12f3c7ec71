"""Paired bootstrap over images for the difference metric(fp32) - metric(int8).

Why paired: fp32 and int8 see the same images, so most of the per-image variation (easy vs hard
images) is shared. Resampling the images once and evaluating *both* models on that same resample
cancels it, giving a much tighter interval on the difference than two independent intervals.

A source is anything that can evaluate its metric on a multiset of images given as weights
(``weights[i]`` = how often image i was drawn): :class:`~harness.metrics.voc_stats.VocStats`,
:class:`~harness.metrics.classification.ClassificationStats`, or a plain per-image array with a
``metric(source, weights)`` callable such as :func:`weighted_mean`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from harness.errors import ConfigError, DataError

# Resamples are drawn in blocks so the index matrix stays small (1000 x 5000 int64 would be 40 MB).
_BLOCK = 256


class Resamplable(Protocol):
    n_images: int

    def value_on(self, weights: np.ndarray) -> float: ...


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Point estimate and percentile interval of ``metric(a) - metric(b)``."""

    estimate: float  # on all images, unweighted
    value_a: float
    value_b: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    seed: int
    mean: float  # of the resampled differences
    std: float
    n_undefined: int  # resamples where the metric was NaN (e.g. no positives drawn); excluded
    samples: np.ndarray  # the resampled differences, for histograms in the report

    def __contains__(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Metric for a plain per-image array (e.g. per-image correctness or loss)."""
    return float(np.asarray(values, dtype=np.float64) @ weights / weights.sum())


def _default_metric(source: Any, weights: np.ndarray) -> float:
    if hasattr(source, "value_on"):
        return float(source.value_on(weights))
    return weighted_mean(source, weights)


def _n_images(source: Any) -> int:
    n = getattr(source, "n_images", None)
    return int(n) if n is not None else len(source)


def paired_bootstrap(
    a: Any,
    b: Any,
    *,
    metric: Callable[[Any, np.ndarray], float] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Resample images with replacement ``n_resamples`` times; same resample for ``a`` and ``b``.

    ``metric(source, weights) -> float`` defaults to ``source.value_on(weights)`` (or the weighted
    mean for an array). Deterministic for a given ``seed`` (numpy ``default_rng``). The interval
    is the percentile interval of the resampled differences.
    """
    metric = metric or _default_metric
    n = _n_images(a)
    if _n_images(b) != n:
        raise DataError(f"Got {n} images for the first source and {_n_images(b)} for the second",
                        expected="both models evaluated on the same images",
                        remedy="pair the per-image statistics by image before bootstrapping")
    if n == 0:
        raise DataError("Got no images to resample", expected="at least one image")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ConfigError(f"Got n_resamples={n_resamples}, confidence={confidence}",
                          expected="n_resamples >= 1 and 0 < confidence < 1")
    ones = np.ones(n)
    value_a, value_b = metric(a, ones), metric(b, ones)
    rng = np.random.default_rng(seed)
    samples = np.empty(n_resamples)
    done = 0
    while done < n_resamples:
        m = min(_BLOCK, n_resamples - done)
        idx = rng.integers(0, n, size=(m, n))
        counts = np.bincount((idx + n * np.arange(m)[:, None]).ravel(), minlength=m * n).reshape(m, n)
        for row in counts:
            w = row.astype(np.float64)
            samples[done] = metric(a, w) - metric(b, w)
            done += 1
    defined = samples[~np.isnan(samples)]
    alpha = (1.0 - confidence) / 2.0
    if defined.size:
        lo, hi = np.quantile(defined, [alpha, 1.0 - alpha])
        mean, std = float(defined.mean()), float(defined.std(ddof=1)) if defined.size > 1 else 0.0
    else:
        lo = hi = mean = std = float("nan")
    return BootstrapResult(
        estimate=value_a - value_b, value_a=value_a, value_b=value_b, ci_low=float(lo), ci_high=float(hi),
        confidence=confidence, n_resamples=n_resamples, seed=seed, mean=mean, std=std,
        n_undefined=int(samples.size - defined.size), samples=samples,
    )
