"""MSE calibration: the symmetric clip that minimises expected quantisation error.

For a clip ``t`` on a symmetric grid with ``qmax = 2**(bits-1) - 1`` positive codes, the step is
``d = t / qmax``. Each histogram bin of |x| is represented by its centre ``c`` and costs

* ``(c - t)**2`` per value when ``c > t`` (clipping), else
* ``d**2 / 12`` per value (rounding noise of a uniform grid, the textbook model).

Exact zeros are kept out of the histogram (they quantise exactly) and cost nothing. Candidates are
the bin edges ``t_k = absmax * k / bins`` for ``k = 1 .. bins``; the first minimum wins, so ties go
to the smaller clip. The cost is evaluated for all candidates at once in float64 blocks: the same
histogram gives a byte-identical threshold.
"""

from __future__ import annotations

import numpy as np

from .base import CalibrationRange, check_int
from .histogram import HistogramCalibrator

_BLOCK = 256


def mse_costs(hist: np.ndarray, absmax: float, *, bits: int = 8) -> np.ndarray:
    """Expected squared error (summed over values) for each candidate ``t_k``, ``k = 1 .. bins``."""
    h = np.asarray(hist, dtype=np.float64)
    nbins = h.size
    centres = absmax * ((np.arange(nbins) + 0.5) / nbins)
    cand = absmax * (np.arange(1, nbins + 1) / nbins)
    qmax = (1 << (bits - 1)) - 1
    out = np.empty(nbins, dtype=np.float64)
    for start in range(0, nbins, _BLOCK):
        t = cand[start:start + _BLOCK, None]
        over = centres[None, :] > t
        err = np.where(over, (centres[None, :] - t) ** 2, (t / qmax) ** 2 / 12.0)
        # numpy's row sum, not BLAS: BLAS threading may change the summation order
        out[start:start + t.shape[0]] = (err * h[None, :]).sum(axis=1)
    return out


def mse_threshold(hist: np.ndarray, absmax: float, *, bits: int = 8) -> float:
    """Best clip from a |x| histogram over ``[0, absmax]``; 0 for an empty histogram or range."""
    h = np.asarray(hist)
    if absmax <= 0 or h.sum() == 0:
        return 0.0
    k = int(np.argmin(mse_costs(h, absmax, bits=bits))) + 1
    return float(absmax * (k / h.size))


class MseCalibrator(HistogramCalibrator):
    """Symmetric MSE-optimal clip for a ``bits``-bit signed symmetric grid (two passes)."""

    method = "mse"
    magnitude = True
    _param_names = ("bits", "bins")

    def __init__(self, *, bits: int = 8, bins: int = 2048) -> None:
        self.bits = bits
        self.bins = bins

    def check_params(self) -> None:
        super().check_params()
        check_int("bits", self.bits, low=2, high=16)

    def compute(self) -> CalibrationRange:
        hist = self._histogram()
        return self._symmetric_range(mse_threshold(hist, self.edge_hi_, bits=self.bits))
