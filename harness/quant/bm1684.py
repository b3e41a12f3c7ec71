"""The integer arithmetic tpu-mlir lowers int8 ops to on Sophon BM1684 and BM1684X (parameters only).

Why: the simulation must compute what the chip computes, not a float requantisation with the
calibrated scales. The two chips differ where it matters (MobileNetV2: BM1684 keeps top-1 on 8 of 24
images, BM1684X on 22): BM1684 requantises a Conv with one power-of-two right shift for the whole
layer, so its weights share one scale that the two activation thresholds dictate; BM1684X uses a
32-bit multiplier and a shift per output channel.

Facts (tpu-mlir 1.30 ``lib/Conversion/TopToTpu/BM1684{,X}/*.cpp``, ``lib/Support/MathUtils.cpp`` and
the TPU-dialect inference, which is bit-exact with the compiled bmodel; re-implemented, checked against
the rshifts and multipliers of tpu-mlir's own MobileNetV2 graphs). Scales are the device's: ``th / 127``
for a signed tensor, ``th / 255`` for an unsigned one (a tensor whose calibrated minimum is >= 0).

Requantisation (both chips): ``out = saturate(floor(acc * multiplier / 2**shift + 0.5))``, an integer
right shift rounding half up, then the fused ReLU (``max(out, 0)``), saturated to int8 [-128, 127] or
uint8 [0, 255]. ReLU6 is lowered with no upper limit: the clamp is the output range.

BM1684 Conv / Gemm (``OnlyShift``, per layer):
    ``r = calRightShiftNum(max|W|, s_in, s_out)``: the largest ``r`` with ``max|W| * s_in / s_out * 2**r < 127``
    (``r < 0``: the layer runs in float). Weights ``round_away(W * f32(2**r * s_in / s_out))`` (float32
    product) in int8, one scale for the whole tensor (depthwise too); bias ``round_away(b * f32(2**r / s_out))``
    in int16, saturated, and while more than 3 % of the bias saturates, ``r`` drops by one.
BM1684 Add: per input ``r_i = floor(log2(127 / (s_i / s_out)))`` (>= 0) and an int8 multiplier
    ``m_i = round_away(f32(2**r_i * s_i / s_out))``; each input is requantised on its own
    (``floor(q_i * m_i / 2**r_i + 0.5)``), the sum saturated.
BM1684 AvgPool: the window sum times ``m / 2**e`` with ``m = round(2**e / k) <= 255`` for the largest such
    ``e`` (k = kernel elements <= 225, else float); no rescale to the output's scale (tpu-mlir gives the
    output the input's threshold).
BM1684X Conv: per output channel ``s_w = max(f32(max|W_c|) / 127, 1e-5)``, weights ``round_away(W / s_w)``
    (in float64), int32 bias ``round_away(b / (s_w * s_in))``, and ``(multiplier, shift)`` from
    ``get_scale_and_shift(f32(s_w * s_in / s_out))``: the shift in [-32, 30] whose rounded multiplier
    (below 2**31 - 1) is nearest, the first of equals. Gemm: the same with one ``s_w = max|W| / 127``.
BM1684X Add: ``get_scale_and_shift_positive(f32(s_i / s_out))`` with an int8 multiplier (< 127), shifts
    0..30. AvgPool: ``get_scale_and_shift(f32(s_in / (s_out * k)))`` with an int8 multiplier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_INT16 = (-32768, 32767)
_INT32 = (-(2**31), 2**31 - 1)
_BIAS_OVERFLOW_MAX = 0.03
_POOL_KERNEL_MAX = 225
CHIPS = ("bm1684", "bm1684x")


@dataclass(frozen=True)
class Requant:
    """``floor(acc * multiplier / 2**shift + 0.5)``: scalar or one per output channel."""

    multiplier: np.ndarray
    shift: np.ndarray

    @property
    def factor(self) -> np.ndarray:
        """``multiplier * 2**-shift`` in float64 (exact: a 31-bit integer times a power of two)."""
        return np.asarray(self.multiplier, np.float64) * np.exp2(-np.asarray(self.shift, np.float64))


@dataclass(frozen=True)
class WeightedParams:
    """A lowered Conv / Gemm: integer weight and bias codes, what one accumulator unit is worth, the requant."""

    weight: np.ndarray  # integer codes, as float32, in the float weight's layout
    bias: np.ndarray  # integer codes, as float32, one per output channel
    accumulator_scale: np.ndarray  # real value of one accumulator unit: scalar or per output channel
    requant: Requant
    bias_bits: int


def _away(v: np.ndarray) -> np.ndarray:
    """C's ``round``: half away from zero."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _int8(v: np.ndarray) -> np.ndarray:
    return np.clip(_away(v), -128, 127).astype(np.float32)


# --- BM1684 -------------------------------------------------------------------------------------
def right_shift_for(fmax: float, s_in: float, s_out: float) -> int:
    """tpu-mlir's ``calRightShiftNum``: double ``fmax * s_in / s_out`` until it reaches 127; one less."""
    v = float(np.float32(fmax)) * s_in / s_out
    if v <= 0.0:
        return 0
    m = 0
    while v < 127:
        v *= 2
        m += 1
    return 31 if m > 32 else m - 1


def _int16_bias(bias: np.ndarray, scale: np.float32) -> tuple[np.ndarray, float]:
    v = _away((bias.astype(np.float32) * scale).astype(np.float64))
    overflow = float(np.mean((v > _INT16[1]) | (v < _INT16[0])))
    return np.clip(v, *_INT16).astype(np.float32), overflow


def bm1684_weighted(weight: np.ndarray, bias: np.ndarray, s_in: float, s_out: float) -> WeightedParams | None:
    """BM1684 Conv / Gemm (OnlyShift); None when tpu-mlir keeps the layer in float (``r < 0``)."""
    w = np.asarray(weight, np.float32)
    r = right_shift_for(float(np.abs(w).max(initial=0.0)), s_in, s_out)
    if r < 0:
        return None
    b, overflow = _int16_bias(bias, np.float32(2.0**r / s_out))
    while overflow > _BIAS_OVERFLOW_MAX and r > 0:
        r -= 1
        b, overflow = _int16_bias(bias, np.float32(2.0**r / s_out))
    codes = _int8((w * np.float32(2.0**r * s_in / s_out)).astype(np.float64))
    return WeightedParams(weight=codes, bias=b, accumulator_scale=np.asarray(s_out / 2.0**r),
                          requant=Requant(np.asarray(1), np.asarray(r)), bias_bits=16)


def bm1684_add(in_scales: list[float], s_out: float) -> Requant | None:
    """Per-input multipliers and shifts of a BM1684 Add; None when tpu-mlir keeps it in float."""
    multipliers, shifts = [], []
    for s in in_scales:
        ratio = s / s_out
        r = max(0, min(31, math.floor(math.log(127.0 / ratio) / math.log(2.0))))  # calRightShiftNumUseCblas
        m = float(np.clip(_away(np.float64(np.float32(2.0**r * ratio))), -128, 127))  # to_int8 saturates
        if m < 0:
            return None
        multipliers.append(int(m))
        shifts.append(r)
    return Requant(np.asarray(multipliers), np.asarray(shifts))


def bm1684_avgpool(kernel: int) -> Requant | None:
    """The window-sum multiplier of a BM1684 average pool of ``kernel`` elements; None above 225 (float)."""
    if not 1 <= kernel <= _POOL_KERNEL_MAX:
        return None
    e = 0
    while math.floor(2 ** (e + 1) / kernel + 0.5) <= 255:
        e += 1
    return Requant(np.asarray(math.floor(2**e / kernel + 0.5)), np.asarray(e))


# --- BM1684X ------------------------------------------------------------------------------------
def scale_and_shift(scale: float, *, bits: int, positive: bool = False) -> tuple[int, int]:
    """tpu-mlir's ``get_scale_and_shift`` (``positive``: ``_positive``, shifts 0..30 only) of a float32 scale."""
    f = float(np.float32(scale))
    limit = 2**31 - 1 if bits == 32 else 127
    best_err, best = float(np.finfo(np.float32).max), 0
    for n in range(0 if positive else -32, 31):
        m = math.floor(abs(f) * 2.0**n + 0.5) * (1 if f >= 0 else -1)
        err = float(np.float32(abs(m / 2.0**n - f)))
        if err < best_err and abs(m) < limit:
            best_err, best = err, n
    return math.floor(abs(f) * 2.0**best + 0.5) * (1 if f >= 0 else -1), best


def bm1684x_weighted(weight: np.ndarray, bias: np.ndarray, s_in: float, s_out: float, *, per_channel: bool,
                     has_bias: bool = True) -> WeightedParams:
    """BM1684X Conv (``per_channel``, weight rows = output channels) or Gemm / MatMul (one weight scale),
    MultiplierShift, int32 bias. A Conv without bias and without negative weights gets uint8 weights."""
    w = np.asarray(weight, np.float32)
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    signed = not per_channel or has_bias or bool(rows.min(initial=0.0) < 0)
    if per_channel:
        s_w = np.maximum(np.abs(rows).max(axis=1) / np.float32(127 if signed else 255),
                         np.float32(1e-5)).astype(np.float64)
    else:
        s_w = np.asarray([float(np.abs(rows).max(initial=0.0)) / 127.0])
    lo, hi = (-128, 127) if signed else (0, 255)
    codes = np.clip(_away(rows.astype(np.float64) / s_w[:, None]), lo, hi).astype(np.float32).reshape(w.shape)
    b = np.asarray(bias, np.float32).astype(np.float64)
    b_codes = np.clip(_away(b / (s_w * s_in)), *_INT32).astype(np.float32)
    pairs = [scale_and_shift(float(s) * s_in / s_out, bits=32) for s in s_w]
    return WeightedParams(weight=codes, bias=b_codes, accumulator_scale=s_w * s_in,
                          requant=Requant(np.asarray([m for m, _ in pairs]), np.asarray([n for _, n in pairs])),
                          bias_bits=32)


def bm1684x_add(in_scales: list[float], s_out: float) -> Requant:
    pairs = [scale_and_shift(s / s_out, bits=8, positive=True) for s in in_scales]
    return Requant(np.asarray([m for m, _ in pairs]), np.asarray([n for _, n in pairs]))


def bm1684x_avgpool(kernel: int, s_in: float, s_out: float) -> Requant:
    m, n = scale_and_shift(s_in / (s_out * kernel), bits=8)
    return Requant(np.asarray(m), np.asarray(n))
