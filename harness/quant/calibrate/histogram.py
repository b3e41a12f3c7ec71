"""Two-pass histogram calibrators (percentile, KL, MSE): range pass, then histogram pass.

Why two passes: a histogram is only exact and mergeable when every shard bins over the same edges.
Growing the range on the fly (onnxruntime, TensorRT) re-bins old counts and makes the result depend
on batch order. Here pass one finds the extremes, pass two bins against them; histograms are int64
counts, so adding shards is exact and sharded calibration equals one pass byte for byte.

Protocol (phase in ``phase_``: ``"range"`` then ``"histogram"``)::

    cal = make_calibrator("kl")
    for batch in data: cal.partial_fit(batch)   # pass 1: min/max only
    cal.begin_second_pass()                     # freeze the histogram edges
    for batch in data: cal.partial_fit(batch)   # pass 2: fill the histogram
    rng = cal.compute()

Sharded: run pass 1 on every shard, ``merge`` them into one calibrator to get the global extremes,
call ``shard.begin_second_pass(observed=(merged.min_, merged.max_))`` on every shard (and on the
merged one), run pass 2 per shard, then ``merge`` the shards. ``observed`` may also be given without
a first pass when the range is already known (e.g. from a min/max calibration run).

Values outside the frozen edges in pass 2 (the data changed between passes, e.g. random
augmentation) are counted in the outermost bin and in ``n_clipped_``. Exact zeros in magnitude
mode are counted in ``n_zero_`` and kept out of the histogram: any symmetric grid represents zero
exactly, and a ReLU tensor's zeros would otherwise swamp bin 0 (ncnn skips them for KL).
"""

from __future__ import annotations

import threading

import numpy as np

from harness.errors import CalibrationError, NumericError

from . import kernels
from .base import CalibrationRange, Calibrator, batch_min_max, check_int


#: Elements binned per step: small enough that the float and index buffers stay in L2 cache.
FILL_CHUNK = 1 << 16
_SCRATCH = threading.local()


def _scratch(dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread reusable buffers: allocating fresh megabytes per tensor and batch cost more in
    page faults than the binning itself."""
    key = np.dtype(dtype).str
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    if key not in cache:
        cache[key] = (np.empty(FILL_CHUNK, dtype=dtype), np.empty(FILL_CHUNK, dtype=np.intp))
    return cache[key]


class HistogramCalibrator(Calibrator):
    """Shared state and binning. ``magnitude`` (class or instance) chooses |x| over ``[0, absmax]``
    versus x over ``[min, max]``."""

    two_pass = True
    magnitude: bool = True

    def __init__(self, *, bins: int = 2048) -> None:
        self.bins = bins

    def check_params(self) -> None:
        check_int("bins", self.bins, low=8, high=1 << 20)

    def _init_state(self) -> None:
        self.phase_ = "range"
        self.min_ = np.inf
        self.max_ = -np.inf
        self.n_zero_ = 0
        self.n_clipped_ = 0

    def _is_magnitude(self) -> bool:
        return bool(self.magnitude)

    # --- pass 1 -------------------------------------------------------------------------------
    def partial_fit(self, batch: np.ndarray) -> "HistogramCalibrator":
        self._ensure_state()
        a = np.asarray(batch)
        if a.size == 0:
            return self
        if self.phase_ == "range":
            lo, hi = batch_min_max(a)
            self.min_ = min(self.min_, lo)
            self.max_ = max(self.max_, hi)
            self.n_seen_ += int(a.size)
        else:
            self._fill(a)
        return self

    def begin_second_pass(self, *, observed: tuple[float, float] | None = None) -> "HistogramCalibrator":
        """Freeze the histogram edges from pass 1, or from ``observed = (min, max)`` (a merged range
        from all shards). ``observed`` must contain what this calibrator saw itself."""
        self._ensure_state()
        if self.phase_ != "range":
            raise CalibrationError("Got begin_second_pass() twice", expected="one call between the passes",
                                   remedy="call reset() to start calibration over")
        if observed is not None:
            lo, hi = float(observed[0]), float(observed[1])
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
                raise NumericError(f"Got observed range ({lo}, {hi})", expected="finite lo <= hi",
                                   remedy="pass (merged.min_, merged.max_) from a merged first pass")
            if self.n_seen_ and (lo > self.min_ or hi < self.max_):
                raise CalibrationError(f"Got observed range ({lo}, {hi}) narrower than this shard's "
                                       f"({self.min_}, {self.max_})",
                                       expected="the range merged over all shards",
                                       remedy="merge every shard's first pass before begin_second_pass")
            self.min_, self.max_ = lo, hi
        elif self.n_seen_ == 0:
            raise CalibrationError("Got begin_second_pass() before any data", expected="a first pass or observed=(min, max)",
                                   remedy="feed pass-one batches with partial_fit() first")
        if self._is_magnitude():
            self.edge_lo_, self.edge_hi_ = 0.0, max(abs(self.min_), abs(self.max_))
        else:
            self.edge_lo_, self.edge_hi_ = float(self.min_), float(self.max_)
        self.hist_ = np.zeros(self.bins, dtype=np.int64)
        self.n_filled_ = 0
        self.phase_ = "histogram"
        return self

    # --- pass 2 -------------------------------------------------------------------------------
    def _fill(self, a: np.ndarray) -> None:
        span = self.edge_hi_ - self.edge_lo_
        # one float64 multiplier for every element: the bin of a value depends on nothing else,
        # which is what makes sharded histograms add up to the one-pass histogram
        k = np.float64(self.bins / span if span > 0 else 0.0)
        flat = np.asarray(a).reshape(-1)
        magnitude = self._is_magnitude()
        if span > 0 and kernels.usable(flat):
            self._fill_compiled(flat, k, magnitude=magnitude)
            return
        # Cost matters here (pass 2 touches every activation once): small chunks in reused
        # buffers (they stay in cache), zeros counted on the integer view, the clamp skipped when
        # the chunk's maximum already lands inside, and truncation instead of floor (equal for the
        # non-negative values that land inside the histogram; anything negative or past the top is
        # clipped to the end bins either way). np.bincount is then most of the cost.
        vbuf, ibuf = _scratch(np.float32 if flat.dtype != np.float64 else np.float64)
        for start in range(0, flat.size, FILL_CHUNK):
            chunk = flat[start:start + FILL_CHUNK]
            n = chunk.size
            v, idx = vbuf[:n], ibuf[:n]
            if magnitude:
                np.abs(chunk, out=v)
                top = float(v.max())
                if not np.isfinite(top):
                    raise NumericError("Got NaN or Inf in calibration data", expected="finite activations",
                                       remedy="find the first layer producing NaN/Inf in the fp32 model")
                # exact zeros have an all-zero bit pattern after abs; counting integers is ~4x faster
                n_zero = n - int(np.count_nonzero(v.view(np.int32 if v.dtype == np.float32 else np.int64)))
                self.n_zero_ += n_zero
                if top > self.edge_hi_:
                    self.n_clipped_ += int(np.count_nonzero(v > self.edge_hi_))
                    np.minimum(v, self.edge_hi_, out=v)  # also keeps huge values from overflowing the cast
                if span > 0:
                    np.multiply(v, k, out=idx, dtype=np.float64, casting="unsafe")
                    # rounding is monotone, so if the largest value lands below `bins` all do
                    if not np.float64(min(top, self.edge_hi_)) * k < self.bins:
                        np.minimum(idx, self.bins - 1, out=idx)
                else:
                    np.greater(v, 0, out=idx, casting="unsafe")
                    idx *= self.bins - 1
                counts = np.bincount(idx, minlength=self.bins)
                counts[0] -= n_zero  # exact zeros stay out of the histogram
            else:
                lo_v, hi_v = float(chunk.min()), float(chunk.max())
                if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
                    raise NumericError("Got NaN or Inf in calibration data", expected="finite activations",
                                       remedy="find the first layer producing NaN/Inf in the fp32 model")
                if lo_v < self.edge_lo_ or hi_v > self.edge_hi_:
                    self.n_clipped_ += int(np.count_nonzero((chunk < self.edge_lo_) | (chunk > self.edge_hi_)))
                d = chunk.astype(np.float64) - self.edge_lo_
                if span > 0:
                    idx[...] = np.floor(d * k)
                else:
                    idx[...] = np.where(d > 0, self.bins - 1, 0)
                np.clip(idx, 0, self.bins - 1, out=idx)
                counts = np.bincount(idx, minlength=self.bins)
            self.hist_ += counts
            self.n_filled_ += int(n)

    def _fill_compiled(self, flat: np.ndarray, k: np.float64, *, magnitude: bool) -> None:
        """The same bins as the numpy loop above, in one compiled pass (:mod:`.kernels`)."""
        if magnitude:
            got = kernels.fill_magnitude(flat, edge_hi=self.edge_hi_, k=k, bins=self.bins)
            if got is not None:
                hist, n_zero, n_clipped = got
                self.n_zero_ += n_zero
        else:
            got = kernels.fill_signed(flat, edge_lo=self.edge_lo_, edge_hi=self.edge_hi_, k=k, bins=self.bins)
            if got is not None:
                hist, n_clipped = got
        if got is None:
            raise NumericError("Got NaN or Inf in calibration data", expected="finite activations",
                               remedy="find the first layer producing NaN/Inf in the fp32 model")
        self.n_clipped_ += n_clipped
        self.hist_ += hist
        self.n_filled_ += int(flat.size)

    # --- merge / compute ----------------------------------------------------------------------
    def merge(self, other: "HistogramCalibrator") -> "HistogramCalibrator":
        self._check_mergeable(other)
        if other.phase_ != self.phase_:
            raise CalibrationError(f"Got a merge of a '{other.phase_}'-phase calibrator into a '{self.phase_}'-phase one",
                                   expected="both shards in the same pass",
                                   remedy="merge after pass one (ranges) or after pass two (histograms), not across")
        if self.phase_ == "range":
            if other.n_seen_:
                self.min_ = min(self.min_, other.min_)
                self.max_ = max(self.max_, other.max_)
                self.n_seen_ += other.n_seen_
            return self
        if (other.edge_lo_, other.edge_hi_) != (self.edge_lo_, self.edge_hi_):
            raise CalibrationError(f"Got histograms over different edges ({other.edge_lo_}, {other.edge_hi_}) "
                                   f"and ({self.edge_lo_}, {self.edge_hi_})",
                                   expected="shards binned over the same merged range",
                                   remedy="pass observed=(merged.min_, merged.max_) to every shard's begin_second_pass")
        self.hist_ = self.hist_ + other.hist_
        self.n_zero_ += other.n_zero_
        self.n_clipped_ += other.n_clipped_
        self.n_filled_ += other.n_filled_
        self.n_seen_ += other.n_seen_
        return self

    def _histogram(self) -> np.ndarray:
        """The filled histogram, or a CalibrationError saying which step is missing."""
        if not self.is_fitted or (self.n_seen_ == 0 and getattr(self, "phase_", "range") == "range"):
            self._require_data()
        if self.phase_ != "histogram":
            raise CalibrationError(f"{type(self).__name__} is still in its range pass",
                                   expected="begin_second_pass() and a second pass over the data before compute()",
                                   remedy="check `two_pass` and run the histogram pass")
        if self.n_filled_ == 0:
            raise CalibrationError(f"{type(self).__name__} got no data in its histogram pass",
                                   expected="the same batches fed again after begin_second_pass()",
                                   remedy="feed the calibration batches a second time")
        return self.hist_

    def _symmetric_range(self, threshold: float) -> CalibrationRange:
        lo = max(-threshold, float(self.min_))
        hi = min(threshold, float(self.max_))
        return CalibrationRange(method=self.method, lo=min(lo, hi), hi=max(lo, hi), threshold=float(threshold),
                                observed_min=float(self.min_), observed_max=float(self.max_))
