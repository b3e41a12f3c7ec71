"""Percentile calibration from a streaming histogram.

Symmetric (default): the ``percentile`` of |x| (exact zeros included in the count). Asymmetric:
the lower and upper tails of x are cut separately, each keeping ``percentile`` of the values.
The result is a bin edge, never an interpolation inside a bin: the chosen edge is the smallest one
with at most ``(1 - percentile/100) * n`` values beyond it, so it is within one bin width above the
exact sample percentile and never cuts more than the requested tail.
"""

from __future__ import annotations

import numpy as np

from harness.errors import ConfigError

from .base import CalibrationRange
from .histogram import HistogramCalibrator


class PercentileCalibrator(HistogramCalibrator):
    """Percentile of |x| (``symmetric=True``) or of both tails of x (``symmetric=False``)."""

    method = "percentile"
    _param_names = ("percentile", "symmetric", "bins")

    def __init__(self, *, percentile: float = 99.99, symmetric: bool = True, bins: int = 2048) -> None:
        self.percentile = percentile
        self.symmetric = symmetric
        self.bins = bins

    def check_params(self) -> None:
        super().check_params()
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 100.0:
            raise ConfigError(f"Got percentile={p!r}", expected="a number in (0, 100]",
                              remedy="use e.g. percentile=99.99")
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"Got symmetric={self.symmetric!r}", expected="True or False",
                              remedy="set symmetric=True for |x|, False for two tails")

    def _is_magnitude(self) -> bool:
        return bool(self.symmetric)

    def compute(self) -> CalibrationRange:
        hist = self._histogram()
        total = int(hist.sum()) + (self.n_zero_ if self.symmetric else 0)
        tail = (1.0 - float(self.percentile) / 100.0) * total
        csum = np.cumsum(hist)
        above = int(hist.sum()) - csum  # above[k]: values in bins strictly after bin k
        k_hi = int(np.argmax(above <= tail))  # exists: above[-1] == 0
        span = self.edge_hi_ - self.edge_lo_
        # edge * (k / bins) (not edge * k / bins) makes the last edge exactly the observed extreme
        hi = self.edge_lo_ + span * ((k_hi + 1) / self.bins)
        if self.symmetric:
            return self._symmetric_range(hi)
        below = csum - hist  # below[k]: values in bins strictly before bin k
        k_lo = int(np.nonzero(below <= tail)[0][-1])  # exists: below[0] == 0
        lo = self.edge_lo_ + span * (k_lo / self.bins)
        return CalibrationRange(method=self.method, lo=float(lo), hi=float(hi),
                                threshold=float(max(abs(lo), abs(hi))),
                                observed_min=float(self.min_), observed_max=float(self.max_))
