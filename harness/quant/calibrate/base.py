"""What every calibrator shares: the result type and the scikit-learn style life cycle.

A calibrator sees one tensor's values, batch by batch, and never keeps them: only counters and
histograms live in memory, so calibrating on 10 or 10 000 images costs the same memory (the
onnxruntime calibrators keep every activation and run out of memory at a few hundred images).

Life cycle (the model runner drives it; see ``harness.quant.calibrate`` for the two-pass protocol):
``__init__`` stores parameters only; ``partial_fit(batch)`` learns; ``compute()`` returns a
:class:`CalibrationRange`; ``merge(other)`` folds another shard's state into this one; ``reset()``
forgets everything learned. Learned attributes end in ``_`` and do not exist before the first
``partial_fit`` or ``merge``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np

from harness.errors import CalibrationError, ConfigError, NumericError

# Flat chunks bound the float64 temporaries of one batch to about 8 MiB whatever the tensor size.
CHUNK = 1 << 20


@dataclass(frozen=True)
class CalibrationRange:
    """A calibrated range for one tensor.

    ``lo``/``hi`` are what an asymmetric scheme should use; ``threshold`` is the symmetric clip
    (``|x| <= threshold``) a symmetric scheme should use. ``observed_min``/``observed_max`` are the
    extremes seen in the data (tpu-mlir tables record them next to the threshold). For clipping
    methods ``lo``/``hi`` are the clip intersected with the observed range, so a post-ReLU tensor
    gets ``lo == 0`` rather than a wasted negative half.
    """

    method: str
    lo: float
    hi: float
    threshold: float
    observed_min: float
    observed_max: float


class Calibrator:
    """Base class. Subclasses set ``method`` and ``two_pass`` and implement the ``_`` hooks."""

    method: ClassVar[str] = ""
    #: True when the calibrator needs the data twice (range pass, then histogram pass).
    two_pass: ClassVar[bool] = False
    _param_names: ClassVar[tuple[str, ...]] = ()

    # --- parameters ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names}

    def check_params(self) -> None:
        """Raise ConfigError for bad parameter values. Called by ``make_calibrator`` and on first use,
        because ``__init__`` must stay a plain store (scikit-learn convention: cloneable, cheap)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- life cycle -----------------------------------------------------------------------------
    def reset(self) -> "Calibrator":
        """Forget everything learned; parameters stay."""
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            delattr(self, name)
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "n_seen_")

    def _ensure_state(self) -> None:
        if not self.is_fitted:
            self.check_params()
            self.n_seen_ = 0
            self._init_state()

    def _init_state(self) -> None:
        raise NotImplementedError

    def partial_fit(self, batch: np.ndarray) -> "Calibrator":
        raise NotImplementedError

    def compute(self) -> CalibrationRange:
        raise NotImplementedError

    def merge(self, other: "Calibrator") -> "Calibrator":
        raise NotImplementedError

    def begin_second_pass(self, *, observed: tuple[float, float] | None = None) -> "Calibrator":
        raise CalibrationError(f"{type(self).__name__} is single-pass; it has no second pass",
                               expected="begin_second_pass only on calibrators with two_pass=True",
                               remedy="check `calibrator.two_pass` before starting a second pass")

    def _check_mergeable(self, other: "Calibrator") -> None:
        if type(other) is not type(self) or other.get_params() != self.get_params():
            raise CalibrationError(f"Got a merge of {other!r} into {self!r}",
                                   expected="two calibrators of the same class and parameters",
                                   remedy="create every shard's calibrator with the same make_calibrator call")
        other._ensure_state()
        self._ensure_state()

    def _require_data(self) -> None:
        if not self.is_fitted or self.n_seen_ == 0:
            raise CalibrationError(f"{type(self).__name__} has seen no data",
                                   expected="at least one non-empty batch before compute()",
                                   remedy="feed calibration batches with partial_fit()")


# --- helpers ------------------------------------------------------------------------------------
def batch_min_max(batch: np.ndarray) -> tuple[float, float]:
    """Exact min and max of a batch; NaN or Inf is a NumericError (it poisons every range)."""
    a = np.asarray(batch)
    lo = float(a.min())
    hi = float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NumericError("Got NaN or Inf in calibration data", expected="finite activations",
                           remedy="find the first layer producing NaN/Inf in the fp32 model")
    return lo, hi


def flat_chunks(batch: np.ndarray) -> Iterator[np.ndarray]:
    """float64 views of the batch in bounded chunks (one copy per chunk, never of the whole batch)."""
    flat = np.asarray(batch).reshape(-1)
    for start in range(0, flat.size, CHUNK):
        yield flat[start:start + CHUNK].astype(np.float64)


def check_int(name: str, value: Any, *, low: int, high: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"Got {name}={value!r}", expected=f"an integer in [{low}, {high}]",
                          remedy=f"set {name} inside that range")
