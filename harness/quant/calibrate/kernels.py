"""Compiled binning loops for the histogram pass, with the numpy path as the reference and the fallback.

Why: the histogram pass touches every activation of every calibration image once, and with numpy that takes
four to five array passes per chunk (abs, compare, multiply-and-cast, bincount). One compiled loop does it in
one read of the data. numba is optional (the ``fast`` extra): without it, or for dtypes other than float32 and
float64, :mod:`harness.quant.calibrate.histogram` bins with numpy. Both paths give the same bins element for
element, because both compute exactly the same arithmetic:

* magnitude mode: ``|x|`` in the input's dtype; exact zeros counted apart; values above ``edge_hi`` (compared
  in the input's dtype, as numpy compares an array with a Python float) are counted as clipped and binned as
  ``edge_hi``; the bin is ``trunc(float64(|x|) * k)``, clamped to the last bin;
* signed mode: the bin is ``floor((float64(x) - edge_lo) * k)``, clamped to ``[0, bins)``; values outside
  ``[edge_lo, edge_hi]`` are counted as clipped.

``k`` is the one float64 multiplier ``bins / span`` of the calibrator, so the bin of a value depends on nothing
else and sharded histograms still add up to the one-pass histogram. The loops release the GIL: the model runner
bins one tensor while onnxruntime computes the next batch. A NaN or Inf anywhere makes a kernel return without
touching the caller's histogram, so the calibrator's state is unchanged when it raises.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

#: Set to "1" to bin with numpy even when numba is installed (to compare the two paths, or to rule numba out).
DISABLE_ENV = "QUANT_HARNESS_NO_NUMBA"

try:  # optional: the `fast` extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def available() -> bool:
    """True when the compiled loops will be used for float32/float64 data."""
    return numba is not None and os.environ.get(DISABLE_ENV, "") != "1"


#: Interleaved sub-histograms: consecutive values often land in the same bin, and one histogram would make every
#: increment wait for the previous one (measured: 4.5 -> 2.6 ns/element on this machine's 2 shared cores).
_LANES = 4

if numba is not None:

    @numba.njit(cache=True, nogil=True, inline="always")
    def _magnitude_step(v, hi, k, last, zero_slot):  # pragma: no cover - compiled
        """One value: (bin, clipped, bad), branch-free (selects, not jumps). Zeros go to ``zero_slot``."""
        bad = not (v < np.inf)  # NaN and Inf
        clipped = v > hi
        v = hi if clipped else v
        b = int(np.float64(v) * k)
        b = last if b > last else b
        return (zero_slot if v == 0 else b), clipped, bad

    @numba.njit(cache=True, nogil=True)
    def _magnitude(flat, hi, k, bins):  # pragma: no cover - compiled; tested through fill_magnitude
        lanes = np.zeros((_LANES, bins + 1), np.int64)  # slot `bins` of each lane counts exact zeros
        last = bins - 1
        n_clipped = 0
        bad = False
        n = flat.size
        i = 0
        while i + _LANES <= n:
            for j in range(_LANES):  # unrolled by the compiler: each lane has its own histogram
                b, c, x = _magnitude_step(abs(flat[i + j]), hi, k, last, bins)
                lanes[j, b] += 1
                n_clipped += c
                bad |= x
            i += _LANES
        for r in range(i, n):
            b, c, x = _magnitude_step(abs(flat[r]), hi, k, last, bins)
            lanes[0, b] += 1
            n_clipped += c
            bad |= x
        total = lanes.sum(axis=0)
        return total[:bins].copy(), total[bins], n_clipped, not bad

    @numba.njit(cache=True, nogil=True, inline="always")
    def _signed_step(x, edge_lo, lo, hi, k, last):  # pragma: no cover - compiled
        bad = not (abs(x) < np.inf)
        t = np.floor((np.float64(x) - edge_lo) * k)
        t = 0.0 if t < 0 else t  # clamped in float: a huge value must not overflow the integer cast
        return (last if t > last else int(t)), (x < lo) | (x > hi), bad

    @numba.njit(cache=True, nogil=True)
    def _signed(flat, edge_lo, lo, hi, k, bins):  # pragma: no cover - compiled; tested through fill_signed
        lanes = np.zeros((_LANES, bins), np.int64)
        last = bins - 1
        n_clipped = 0
        bad = False
        n = flat.size
        i = 0
        while i + _LANES <= n:
            for j in range(_LANES):
                b, c, x = _signed_step(flat[i + j], edge_lo, lo, hi, k, last)
                lanes[j, b] += 1
                n_clipped += c
                bad |= x
            i += _LANES
        for r in range(i, n):
            b, c, x = _signed_step(flat[r], edge_lo, lo, hi, k, last)
            lanes[0, b] += 1
            n_clipped += c
            bad |= x
        return lanes.sum(axis=0), n_clipped, not bad


def usable(flat: np.ndarray) -> bool:
    """Whether the compiled loops take this array (contiguous float32/float64, numba present and enabled)."""
    return available() and flat.dtype in (np.float32, np.float64) and flat.flags.c_contiguous


def fill_magnitude(flat: np.ndarray, *, edge_hi: float, k: float, bins: int) -> tuple[np.ndarray, int, int] | None:
    """Histogram of ``|flat|`` (zeros left out), the number of exact zeros and of clipped values; None on NaN/Inf.
    ``k`` must be positive (a zero span is binned by the numpy path)."""
    # the edge in the data's dtype: numpy compares an array with a Python float that way (NEP 50)
    hist, n_zero, n_clipped, ok = _magnitude(flat, flat.dtype.type(edge_hi), np.float64(k), int(bins))
    return (hist, int(n_zero), int(n_clipped)) if ok else None


def fill_signed(flat: np.ndarray, *, edge_lo: float, edge_hi: float, k: float,
                bins: int) -> tuple[np.ndarray, int] | None:
    """Histogram of ``flat`` over ``[edge_lo, edge_hi]`` and the number of values outside; None on NaN/Inf."""
    kind = flat.dtype.type
    hist, n_clipped, ok = _signed(flat, np.float64(edge_lo), kind(edge_lo), kind(edge_hi), np.float64(k), int(bins))
    return (hist, int(n_clipped)) if ok else None
