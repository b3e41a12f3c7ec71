"""Quantisation schemes and the reference quantiser.

Everything else in the harness (QDQ writing, tables, profiles) is checked against the functions in
this module, so they are written to be obviously correct rather than fast, and every convention a
toolchain can disagree on is a field of :class:`QuantScheme` instead of a hidden default.

Uniform domain (ONNX QuantizeLinear, TFLite, ncnn, Sophon)
    ``q = clamp(round(x / s) + z, qmin, qmax)`` and ``x' = (q - z) * s``; ``s`` is an ONNX-style
    scale (``x = q * s``), the inverse of an ncnn multiplicative scale. ``x / s`` is computed in
    float64 from the float32 scale; onnxruntime divides in float32, so a value sitting exactly on
    a float32 rounding tie may land one code apart (measure-zero for real data).
    Rounding: ``half_even`` (ONNX), ``half_away`` (ncnn, C's ``round``), ``half_up`` (ties toward
    +inf, ``floor(v + 0.5)``: Sophon's requantising right shifts).

Log2 domain (HiSilicon NNIE), sign-magnitude, always per tensor ("per layer")
    ``L`` levels per octave and ``N`` magnitude codes: 8-bit ``L = 16, N = 128`` (one sign bit and
    a 7-bit magnitude), 16-bit ``L = 2048, N = 32768`` (one sign bit and a 15-bit magnitude, the
    same layout widened). For a clip value ``c`` the offset is ``z = round(L * log2(c)) - (N - 1)``;
    magnitude code ``m`` in ``[0, N-1]`` means ``2 ** ((m + z) / L)``, so the top code is within half
    a level of ``c`` and the smallest level is ``2 ** (z / L)``.
    The integer returned by :func:`quantize` is ``sign(x) * (m + 1)`` and ``0`` encodes exact zero:
    a log grid has no zero, and keeping it as a distinct integer means ``dequantize`` needs no side
    channel. Magnitudes below half the smallest level flush to 0 (0 is then the nearest value);
    magnitudes between that and the smallest level take the smallest level; above the top level
    they clamp. Within ``[2**(z/L), c]`` rounding is in the log domain, so the relative error is at
    most ``2 ** (1 / (2L)) - 1``. For log2, ``quant_params`` returns ``scale = 2 ** (z / L)`` (the
    smallest level, informational) and ``zero_point = z``; the quantiser uses only ``z``.

Degenerate ranges never produce an infinite or zero scale: a range whose scale would be below the
smallest normal float32 (``lo == hi == 0``, a dead weight channel) gets the unit scale 1.0, as
onnxruntime does, so zeros quantise to the zero point exactly; a log2 clip of 0 is treated as 1.0.
NaN or Inf in a range or in the data raise :class:`NumericError` (an Inf activation means the fp32
model already overflowed; clamping it silently would hide that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from harness.errors import CalibrationError, ConfigError, NumericError

Granularity = Literal["per_tensor", "per_channel"]
Rounding = Literal["half_even", "half_away", "half_up"]
Domain = Literal["uniform", "log2"]

_GRANULARITIES = ("per_tensor", "per_channel")
_ROUNDINGS = ("half_even", "half_away", "half_up")
_DOMAINS = ("uniform", "log2")
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
# levels per octave and number of magnitude codes of the NNIE log code, by bit width
_LOG2_LAYOUT = {8: (16, 128), 16: (2048, 32768)}


@dataclass(frozen=True, kw_only=True)
class QuantScheme:
    """How a tensor is quantised. Defaults are the ncnn / Sophon symmetric narrow int8 scheme.

    ``symmetric`` means the zero point is fixed at 0 and the range is ``[-t, t]``; it requires
    ``signed`` because an unsigned symmetric grid cannot hold negative values at all.
    ``axis`` is the channel axis for ``per_channel`` (output channels of a Conv weight are 0).
    ``float32_division``: compute ``x / s`` in float32 (one rounding before ``round``), as
    onnxruntime's quantiser does for weights (``quantize_nparray``) and its QuantizeLinear kernel
    does at run time. The default float64 quotient is exact-then-rounded once; the two differ on
    values whose float32 quotient lands on a .5 tie (2 of MobileNetV2's 53 weight tensors have such
    a value, and one flipped code there moves the logits by a step).
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = True
    granularity: Granularity = "per_tensor"
    axis: int = 0
    rounding: Rounding = "half_even"
    domain: Domain = "uniform"
    float32_division: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (8, 16):
            raise ConfigError(f"Got bits={self.bits!r}", expected="8 or 16", remedy="use bits=8 or bits=16")
        for name, value, valid in (
            ("granularity", self.granularity, _GRANULARITIES),
            ("rounding", self.rounding, _ROUNDINGS),
            ("domain", self.domain, _DOMAINS),
        ):
            if value not in valid:
                raise ConfigError(f"Got {name}={value!r}", expected=f"one of {', '.join(valid)}",
                                  remedy=f"set {name} to one of those")
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ConfigError(f"Got axis={self.axis!r}", expected="an integer channel axis",
                              remedy="use axis=0 for Conv weights, axis=1 for NCHW activations")
        if self.symmetric and not self.signed:
            raise ConfigError("Got a symmetric unsigned scheme", expected="signed=True when symmetric=True",
                              remedy="use symmetric=False for uint8 (zero point from the range)")
        if self.domain == "log2":
            if not (self.signed and self.symmetric):
                raise ConfigError("Got an unsigned or asymmetric log2 scheme",
                                  expected="signed=True, symmetric=True (NNIE log codes are sign-magnitude)",
                                  remedy="set signed=True and symmetric=True for domain='log2'")
            if self.granularity != "per_tensor":
                raise ConfigError("Got granularity='per_channel' for domain='log2'",
                                  expected="per_tensor (NNIE log codes are per layer)",
                                  remedy="set granularity='per_tensor'")

    @property
    def qmin(self) -> int:
        """Smallest integer code (log2: smallest magnitude code, 0)."""
        if self.domain == "log2":
            return 0
        if self.signed:
            return -(1 << (self.bits - 1)) + int(self.narrow_range)
        return int(self.narrow_range)

    @property
    def qmax(self) -> int:
        """Largest integer code (log2: largest magnitude code, 127 or 32767)."""
        if self.domain == "log2":
            return _LOG2_LAYOUT[self.bits][1] - 1
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def levels_per_octave(self) -> int:
        """Log2 domain only: 16 (8-bit) or 2048 (16-bit)."""
        return _LOG2_LAYOUT[self.bits][0]

    @property
    def code_dtype(self) -> np.dtype:
        """Integer dtype of :func:`quantize` output (log2 needs room for ``+-(N)``)."""
        if self.domain == "log2":
            return np.dtype(np.int16 if self.bits == 8 else np.int32)
        kind = "int" if self.signed else "uint"
        return np.dtype(f"{kind}{self.bits}")


# --- parameters -------------------------------------------------------------------------------
def _finite_range(lo: np.ndarray, hi: np.ndarray) -> None:
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise NumericError("Got a NaN or Inf in a quantisation range", expected="finite lo and hi",
                           remedy="check the calibration data and the fp32 model for overflow")
    if np.any(lo > hi):
        raise CalibrationError(f"Got lo > hi in a quantisation range (lo={lo}, hi={hi})",
                               expected="lo <= hi", remedy="check the calibration table or calibrator")


def _round(v: np.ndarray, rounding: str) -> np.ndarray:
    if rounding == "half_even":
        return np.rint(v)
    if rounding == "half_up":
        # ties toward +inf, what an integer right shift with a +half offset computes (tpu-mlir's HalfUp);
        # floor + exact fractional part, not floor(v + 0.5), which rounds 0.49999999999999994 up
        f = np.floor(v)
        return f + (v - f >= 0.5)
    # trunc + exact fractional part avoids the floor(x + 0.5) bug at 0.49999999999999994
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= 0.5, np.sign(v), 0.0)


def log2_params(scheme: QuantScheme, clip: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NNIE log-code parameters for a clip value ``c``: ``(c_used, z)``.

    ``c_used`` is ``c`` except that a clip below the smallest normal float32 becomes 1.0 (log2 of 0
    is undefined and a zero tensor needs no particular grid).
    """
    if scheme.domain != "log2":
        raise ConfigError(f"Got domain={scheme.domain!r} for log2_params", expected="domain='log2'",
                          remedy="call quant_params for uniform schemes")
    c = np.abs(np.asarray(clip, dtype=np.float64))
    if not np.all(np.isfinite(c)):
        raise NumericError("Got a NaN or Inf log2 clip value", expected="a finite clip",
                           remedy="check the calibration data")
    c = np.where(c < _FLOAT32_TINY, 1.0, c)
    levels, codes = _LOG2_LAYOUT[scheme.bits]
    z = _round(levels * np.log2(c), scheme.rounding) - (codes - 1)
    return c, z.astype(np.int32)


def quant_params(scheme: QuantScheme, lo: float | np.ndarray, hi: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, zero_point)`` for the range ``[lo, hi]``: float32 and int32 arrays.

    Per-tensor schemes take scalars and return 0-d arrays; per-channel schemes take one value per
    channel and return arrays of that shape. Asymmetric ranges are widened to include 0 so the zero
    point is an exact integer (TFLite / onnxruntime nudging); the zero point is rounded with the
    scheme's rounding mode, then clamped, and computed from the float32 scale actually used.
    """
    lo_a = np.asarray(lo, dtype=np.float64)
    hi_a = np.asarray(hi, dtype=np.float64)
    lo_a, hi_a = np.broadcast_arrays(lo_a, hi_a)
    if scheme.granularity == "per_tensor" and lo_a.size != 1:
        raise ValueError(f"per_tensor scheme needs a scalar range, got shape {lo_a.shape}")
    _finite_range(lo_a, hi_a)
    if scheme.domain == "log2":
        _, z = log2_params(scheme, np.maximum(np.abs(lo_a), np.abs(hi_a)))
        scale = np.exp2(z / scheme.levels_per_octave).astype(np.float32)
        return scale, z
    if scheme.symmetric:
        t = np.maximum(np.abs(lo_a), np.abs(hi_a))
        # narrow or not, +t maps to qmax; the extra -128 code of a full range is simply unused
        scale = (t / scheme.qmax).astype(np.float32)
        scale = np.where(scale < _FLOAT32_TINY, np.float32(1.0), scale).astype(np.float32)
        return scale, np.zeros(scale.shape, dtype=np.int32)
    lo_z = np.minimum(lo_a, 0.0)
    hi_z = np.maximum(hi_a, 0.0)
    scale = ((hi_z - lo_z) / (scheme.qmax - scheme.qmin)).astype(np.float32)
    scale = np.where(scale < _FLOAT32_TINY, np.float32(1.0), scale).astype(np.float32)
    z = scheme.qmin - _round(lo_z / scale.astype(np.float64), scheme.rounding)
    z = np.clip(z, scheme.qmin, scheme.qmax).astype(np.int32)
    return scale, z


def weight_ranges(w: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of an initializer: per channel along ``scheme.axis`` or for the whole tensor.

    Float64 results so that ``quant_params`` does its own single rounding to float32.
    """
    a = np.asarray(w)
    if not np.all(np.isfinite(a)):
        raise NumericError("Got NaN or Inf in a weight tensor", expected="finite weights",
                           remedy="re-export the model; a NaN weight means the checkpoint is broken")
    if a.size == 0:
        raise NumericError("Got an empty weight tensor", expected="at least one value",
                           remedy="check the initializer")
    if scheme.granularity == "per_tensor":
        return np.asarray(a.min(), dtype=np.float64), np.asarray(a.max(), dtype=np.float64)
    axis = _norm_axis(scheme.axis, a.ndim)
    others = tuple(i for i in range(a.ndim) if i != axis)
    return a.min(axis=others).astype(np.float64), a.max(axis=others).astype(np.float64)


# --- the quantiser ----------------------------------------------------------------------------
def _norm_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-d tensor")
    return axis % ndim


def _broadcast(p: np.ndarray, scheme: QuantScheme, ndim: int) -> np.ndarray:
    """Reshape per-channel parameters so they broadcast along ``scheme.axis``."""
    p = np.asarray(p)
    if scheme.granularity == "per_tensor" or p.ndim == 0:
        return p.reshape(()) if p.size == 1 else p
    shape = [1] * ndim
    shape[_norm_axis(scheme.axis, ndim)] = p.size
    return p.reshape(shape)


def _check_finite_data(x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise NumericError("Got NaN or Inf in a tensor to quantise", expected="finite values",
                           remedy="find the first layer producing NaN/Inf in the fp32 model")


def quantize(x: np.ndarray, scheme: QuantScheme, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Integer codes of ``x`` (dtype ``scheme.code_dtype``); see the module docstring for log2."""
    xa = np.asarray(x, dtype=np.float64)
    _check_finite_data(xa)
    z = _broadcast(np.asarray(zero_point, dtype=np.float64), scheme, xa.ndim)
    if scheme.domain == "log2":
        return _log2_quantize(xa, scheme, z)
    if scheme.float32_division:
        s32 = _broadcast(np.asarray(scale, dtype=np.float32), scheme, xa.ndim)
        v = (xa.astype(np.float32) / s32).astype(np.float64)
    else:
        v = xa / _broadcast(np.asarray(scale, dtype=np.float32).astype(np.float64), scheme, xa.ndim)
    q = _round(v, scheme.rounding) + z
    return np.clip(q, scheme.qmin, scheme.qmax).astype(scheme.code_dtype)


def dequantize(q: np.ndarray, scheme: QuantScheme, scale: np.ndarray, zero_point: np.ndarray,
               *, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Real values of codes ``q``. ``(q - z) * s`` is exact in float64 (a 17-bit integer times a
    float32), so the single cast to float32 equals onnxruntime's DequantizeLinear bit for bit."""
    qa = np.asarray(q).astype(np.float64)
    z = _broadcast(np.asarray(zero_point, dtype=np.float64), scheme, qa.ndim)
    if scheme.domain == "log2":
        mag = np.exp2((np.abs(qa) - 1.0 + z) / scheme.levels_per_octave)
        return np.where(qa == 0, 0.0, np.sign(qa) * mag).astype(dtype)
    s = _broadcast(np.asarray(scale, dtype=np.float32).astype(np.float64), scheme, qa.ndim)
    return ((qa - z) * s).astype(dtype)


def fake_quant(x: np.ndarray, scheme: QuantScheme, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``dequantize(quantize(x))`` in the dtype of ``x`` (float32 for non-float input)."""
    xa = np.asarray(x)
    dtype = xa.dtype if np.issubdtype(xa.dtype, np.floating) else np.dtype(np.float32)
    return dequantize(quantize(xa, scheme, scale, zero_point), scheme, scale, zero_point, dtype=dtype)


def _log2_quantize(x: np.ndarray, scheme: QuantScheme, z: np.ndarray) -> np.ndarray:
    levels = scheme.levels_per_octave
    mag = np.abs(x)
    smallest = np.exp2(z / levels)
    with np.errstate(divide="ignore"):
        code = _round(levels * np.log2(np.where(mag > 0, mag, 1.0)), scheme.rounding) - z
    code = np.clip(code, 0, scheme.qmax)
    signed = np.sign(x) * (code + 1.0)
    # below half the smallest level, 0 is the nearest representable value
    return np.where(mag < smallest / 2.0, 0.0, signed).astype(scheme.code_dtype)
