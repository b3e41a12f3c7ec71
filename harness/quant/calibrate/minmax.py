"""Min/max calibration, plain or with a moving average of per-batch extremes.

Plain min/max is exact, order-independent and mergeable (``min`` of mins). The moving average
(``momentum``) damps one outlier batch, as TensorFlow's QAT observers do, but the result depends on
the order of batches, so two shards cannot be merged into what one pass would give: ``merge``
refuses rather than returning a plausible but different number.
"""

from __future__ import annotations

import numpy as np

from harness.errors import CalibrationError, ConfigError

from .base import CalibrationRange, Calibrator, batch_min_max


class MinMaxCalibrator(Calibrator):
    """Observed extremes.

    ``momentum``: ``None`` for plain min/max; otherwise a float in ``[0, 1)`` and each batch updates
    ``running = momentum * running + (1 - momentum) * batch_extreme`` (the first batch initialises;
    0.9 is TensorFlow's usual decay).
    """

    method = "minmax"
    two_pass = False
    _param_names = ("momentum",)

    def __init__(self, *, momentum: float | None = None) -> None:
        self.momentum = momentum

    def check_params(self) -> None:
        m = self.momentum
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0):
            raise ConfigError(f"Got momentum={m!r}", expected="None (plain min/max) or a float in [0, 1)",
                              remedy="use momentum=0.9 for a moving average, or leave it unset")

    def _init_state(self) -> None:
        self.min_ = np.inf
        self.max_ = -np.inf

    def partial_fit(self, batch: np.ndarray) -> "MinMaxCalibrator":
        self._ensure_state()
        if np.asarray(batch).size == 0:
            return self
        lo, hi = batch_min_max(batch)
        if self.momentum is None or self.n_seen_ == 0:
            self.min_ = min(self.min_, lo)
            self.max_ = max(self.max_, hi)
        else:
            m = float(self.momentum)
            self.min_ = m * self.min_ + (1.0 - m) * lo
            self.max_ = m * self.max_ + (1.0 - m) * hi
        self.n_seen_ += int(np.asarray(batch).size)
        return self

    def merge(self, other: "MinMaxCalibrator") -> "MinMaxCalibrator":
        self._check_mergeable(other)
        if self.momentum is not None:
            raise CalibrationError("Got a merge of moving-average MinMax calibrators",
                                   expected="momentum=None (a moving average depends on batch order)",
                                   remedy="use plain minmax for sharded calibration, or run one pass")
        if other.n_seen_:
            self.min_ = min(self.min_, other.min_)
            self.max_ = max(self.max_, other.max_)
            self.n_seen_ += other.n_seen_
        return self

    def compute(self) -> CalibrationRange:
        self._require_data()
        lo, hi = float(self.min_), float(self.max_)
        return CalibrationRange(method=self.method, lo=lo, hi=hi, threshold=max(abs(lo), abs(hi)),
                                observed_min=lo, observed_max=hi)
