"""Entropy (KL-divergence) calibration: the ncnn / TensorRT / tpu-mlir threshold search.

Histogram ``h`` of |x| with ``bins`` (2048) bins over ``[0, absmax]``. For each candidate
``i in [levels, bins)`` (``levels`` = 128 for int8):

* reference ``P``: ``h[:i]`` with the outliers ``sum(h[i:])`` folded into bin ``i - 1``;
* candidate ``Q``: the unclipped ``h[:i]`` merged into ``levels`` levels, level ``j`` covering bins
  ``b`` with ``b * levels // i == j`` (an even integer split: TensorRT's ``linspace`` partition),
  then expanded back by spreading each level's count evenly over its *non-zero* source bins;
* ``KL(P || Q)`` after normalising both; a candidate where ``P > 0`` but ``Q == 0`` (outliers
  folded into an empty bin) has infinite divergence, as ``scipy.stats.entropy`` gives it.

``threshold = (i_best + 0.5) * absmax / bins`` with ``i_best`` the first minimum. If no candidate
is finite the threshold is ``absmax`` (nothing to trade off). ncnn splits levels at fractional bin
boundaries instead of whole bins; thresholds then differ by a few bins at most.

The search is vectorised over blocks of candidates (integer prefix sums give every level's count
and non-zero count at once); it takes about 4 ms for 2048 bins (9 ms before the level boundaries
were cached), where a Python loop over the 1920 candidates takes about a minute in onnxruntime.
Float64 throughout, no randomness and a fixed block layout: the same histogram gives a
byte-identical threshold.
"""

from __future__ import annotations

import functools

import numpy as np

from harness.errors import ConfigError

from .base import CalibrationRange, check_int
from .histogram import HistogramCalibrator

_BLOCK = 128  # candidates per block: bounds temporaries to a few MiB


def kl_divergences(hist: np.ndarray, *, levels: int = 128) -> np.ndarray:
    """``KL(P_i || Q_i)`` for ``i = levels, ..., len(hist) - 1`` (see the module docstring).

    Closed form per level instead of per bin: inside level ``j`` every non-empty bin has the same
    ``Q = C_j / N_j`` (level count over non-empty bins), so ``sum_b P_b log Q_b`` collapses to
    ``sum_j C_j log(C_j / N_j)`` plus the outlier mass times the last level's ``log Q``. With
    ``T`` the total and ``K`` the kept count (``sum Q = K``)::

        KL = (sum_b P_b log P_b - sum_b P_b log Q_b) / T + log K - log T

    That is ``levels`` terms per candidate instead of ``bins`` (about 100x less work than the
    per-bin sum). Values equal the per-bin sum to float64 rounding; the reference implementation in
    the tests is the per-bin sum.

    Cost: the level boundaries depend only on ``(bins, levels)`` and are cached, and each
    candidate's level counts come from one gather of the prefix sums and a difference of
    neighbours. The float64 expressions and the block layout are fixed (they decide the rounding),
    so a histogram always gives the same bits.
    """
    h = np.asarray(hist, dtype=np.int64)
    nbins = h.size
    prefix = np.concatenate(([0], np.cumsum(h)))
    nz = h != 0
    nz_prefix = np.concatenate(([0], np.cumsum(nz)))
    hf = h.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(nz, hf * np.log(np.where(nz, hf, 1.0)), 0.0)
    hlogh_prefix = np.concatenate(([0.0], np.cumsum(hlogh)))
    total = int(prefix[-1])
    cand = np.arange(levels, nbins, dtype=np.int64)
    out = np.full(cand.size, np.inf, dtype=np.float64)
    if total == 0:
        return out
    block = _BLOCK * 4
    level_starts = _level_starts(nbins, levels)
    for start in range(0, cand.size, block):
        i = cand[start:start + block]
        starts = level_starts[start:start + block]
        counts = _level_sums(prefix, starts)
        nonzero = _level_sums(nz_prefix, starts)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_level = np.where(counts > 0, counts * np.log(counts / np.where(nonzero > 0, nonzero, 1.0)), 0.0)
            q_last = np.log(counts[:, -1] / np.where(nonzero[:, -1] > 0, nonzero[:, -1], 1.0))
        kept = prefix[i]
        outliers = (total - kept).astype(np.float64)
        last = hf[i - 1]
        p_last = last + outliers
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = hlogh_prefix[i - 1] + np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
            plogq = per_level.sum(axis=1) + np.where(outliers > 0, outliers * q_last, 0.0)
            kl = (plogp - plogq) / total + np.log(np.where(kept > 0, kept, 1).astype(np.float64)) - np.log(float(total))
        # outliers folded into an empty bin: P > 0 where Q == 0; nothing kept: Q is all zero
        kl[((last == 0) & (outliers > 0)) | (kept == 0)] = np.inf
        out[start:start + i.size] = kl
    return out


@functools.lru_cache(maxsize=8)
def _level_starts(nbins: int, levels: int) -> np.ndarray:
    """``[candidate, j]``: first bin of level ``j`` for candidate ``i = levels + candidate``.

    Level ``j`` starts at ``ceil(j * i / levels)``; level ``levels`` starts at ``i`` itself. The
    same for every histogram of this size, so it is computed once (read-only)."""
    i = np.arange(levels, nbins, dtype=np.int64)
    j = np.arange(levels + 1, dtype=np.int64)
    starts = (j[None, :] * i[:, None] + levels - 1) // levels
    starts.setflags(write=False)
    return starts


def _level_sums(prefix: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per candidate row and level, ``prefix[end] - prefix[start]`` as float64 (exact integers)."""
    at = prefix.take(starts)
    return (at[:, 1:] - at[:, :-1]).astype(np.float64)


def kl_threshold(hist: np.ndarray, absmax: float, *, levels: int = 128) -> float:
    """Threshold from a |x| histogram over ``[0, absmax]``; 0 for an empty or all-zero histogram."""
    h = np.asarray(hist, dtype=np.int64)
    if absmax <= 0 or h.sum() == 0:
        return 0.0
    kl = kl_divergences(h, levels=levels)
    if not np.any(np.isfinite(kl)):
        return float(absmax)
    i_best = levels + int(np.argmin(kl))
    return float(absmax * ((i_best + 0.5) / h.size))


class EntropyCalibrator(HistogramCalibrator):
    """KL-divergence threshold (two passes; see ``harness.quant.calibrate.histogram``).

    ``ignore_zeros`` (default True, as ncnn) leaves exact zeros out of the histogram; with False
    they count in bin 0, as in TensorRT's calibrator.
    """

    method = "kl"
    magnitude = True
    _param_names = ("bins", "levels", "ignore_zeros")

    def __init__(self, *, bins: int = 2048, levels: int = 128, ignore_zeros: bool = True) -> None:
        self.bins = bins
        self.levels = levels
        self.ignore_zeros = ignore_zeros

    def check_params(self) -> None:
        super().check_params()
        check_int("levels", self.levels, low=2, high=max(2, int(self.bins) - 1))
        if not isinstance(self.ignore_zeros, bool):
            raise ConfigError(f"Got ignore_zeros={self.ignore_zeros!r}", expected="True or False",
                              remedy="set ignore_zeros=True (ncnn) or False (TensorRT)")

    def compute(self) -> CalibrationRange:
        hist = self._histogram().copy()
        if not self.ignore_zeros:
            hist[0] += self.n_zero_
        return self._symmetric_range(kl_threshold(hist, self.edge_hi_, levels=self.levels))
