"""Streaming calibrators: minmax, percentile, kl (entropy), mse.

How the model runner drives them (one calibrator per tensor)::

    cals = {name: make_calibrator("kl") for name in tensors}
    for batch in data:                              # pass 1
        for name, cal in cals.items(): cal.partial_fit(outputs[name])
    second = [c for c in cals.values() if c.two_pass]
    if second:
        for c in second: c.begin_second_pass()      # freezes histogram edges from pass 1
        for batch in data:                          # pass 2, only for two-pass calibrators
            for name in ...: cals[name].partial_fit(outputs[name])
    ranges = {name: cal.compute() for name, cal in cals.items()}

``two_pass`` is a class attribute: MinMax is single-pass (``begin_second_pass`` raises on it);
percentile, kl and mse bin against edges fixed by pass 1. Sharding and the exactness guarantee are
described in :mod:`harness.quant.calibrate.histogram`. All accumulation is exact (int64 counts,
exact min/max); thresholds are computed in float64 with a fixed evaluation order, so identical data
give byte-identical thresholds.
"""

from __future__ import annotations

from typing import Any

from harness.errors import ConfigError

from .base import CalibrationRange, Calibrator
from .entropy import EntropyCalibrator, kl_divergences, kl_threshold
from .histogram import HistogramCalibrator
from .minmax import MinMaxCalibrator
from .mse import MseCalibrator, mse_costs, mse_threshold
from .percentile import PercentileCalibrator

_REGISTRY: dict[str, type[Calibrator]] = {
    "minmax": MinMaxCalibrator,
    "percentile": PercentileCalibrator,
    "kl": EntropyCalibrator,
    "entropy": EntropyCalibrator,
    "mse": MseCalibrator,
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)


def make_calibrator(method: str, **params: Any) -> Calibrator:
    """A fresh calibrator for ``method`` with validated keyword parameters."""
    cls = _REGISTRY.get(str(method).lower()) if isinstance(method, str) else None
    if cls is None:
        raise ConfigError(f"Got calibration method {method!r}", expected=f"one of {', '.join(METHODS)}",
                          remedy="fix the method name in the suite's quantisation settings")
    unknown = sorted(set(params) - set(cls._param_names))
    if unknown:
        valid = ", ".join(cls._param_names) or "none"
        raise ConfigError(f"Got unknown parameter(s) {', '.join(unknown)} for method {method!r}",
                          expected=f"parameters among: {valid}", remedy="remove or rename them")
    cal = cls(**params)
    cal.check_params()
    return cal


__all__ = [
    "METHODS",
    "CalibrationRange",
    "Calibrator",
    "EntropyCalibrator",
    "HistogramCalibrator",
    "MinMaxCalibrator",
    "MseCalibrator",
    "PercentileCalibrator",
    "kl_divergences",
    "kl_threshold",
    "make_calibrator",
    "mse_costs",
    "mse_threshold",
]
