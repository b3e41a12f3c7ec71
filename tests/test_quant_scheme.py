"""Properties and reference cases of the quantiser in harness.quant.scheme."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import CalibrationError, ConfigError, NumericError
from harness.quant.scheme import (
    QuantScheme,
    dequantize,
    fake_quant,
    log2_params,
    quant_params,
    quantize,
    weight_ranges,
)

FAST = settings(max_examples=60, deadline=None)

SCHEMES = [
    QuantScheme(),  # ncnn / Sophon symmetric narrow int8
    QuantScheme(narrow_range=False),
    QuantScheme(symmetric=False, narrow_range=False),  # int8 asymmetric
    QuantScheme(signed=False, symmetric=False, narrow_range=False),  # TFLite uint8
    QuantScheme(signed=False, symmetric=False, narrow_range=False, rounding="half_away"),
    QuantScheme(bits=16),
    QuantScheme(bits=16, signed=False, symmetric=False, narrow_range=False),
]
scheme_st = st.sampled_from(SCHEMES)
finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
values_st = st.lists(finite, min_size=1, max_size=40).map(lambda v: np.asarray(v, dtype=np.float64))


@st.composite
def ranges(draw):
    a = draw(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False))
    b = draw(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False))
    lo, hi = min(a, b), max(a, b)
    if hi - lo < 1e-3:  # keep the step far from float32 denormals in the bound arithmetic
        hi = lo + 1.0
    return lo, hi


# --- qmin / qmax / validation --------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, qmin, qmax",
    [
        ({}, -127, 127),
        ({"narrow_range": False}, -128, 127),
        ({"symmetric": False, "narrow_range": False}, -128, 127),
        ({"signed": False, "symmetric": False, "narrow_range": False}, 0, 255),
        ({"signed": False, "symmetric": False, "narrow_range": True}, 1, 255),
        ({"bits": 16}, -32767, 32767),
        ({"bits": 16, "signed": False, "symmetric": False, "narrow_range": False}, 0, 65535),
        ({"domain": "log2"}, 0, 127),
        ({"domain": "log2", "bits": 16}, 0, 32767),
    ],
)
def test_qmin_qmax(kwargs, qmin, qmax):
    s = QuantScheme(**kwargs)
    assert (s.qmin, s.qmax) == (qmin, qmax)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 4},
        {"granularity": "per_row"},
        {"rounding": "up"},
        {"domain": "log10"},
        {"symmetric": True, "signed": False},
        {"domain": "log2", "granularity": "per_channel"},
        {"domain": "log2", "symmetric": False},
        {"axis": 1.5},
    ],
)
def test_invalid_schemes_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match="Expected"):
        QuantScheme(**kwargs)


def test_scheme_is_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        QuantScheme(8)  # type: ignore[misc]
    s = QuantScheme()
    with pytest.raises(Exception):
        s.bits = 16  # type: ignore[misc]


# --- hand-computed reference cases ---------------------------------------------------------------
def test_symmetric_int8_reference():
    s = QuantScheme()
    scale, zp = quant_params(s, -0.5, 1.27)
    assert scale == np.float32(1.27 / 127) and zp == 0
    q = quantize(np.array([0.0, 0.01, -0.015, 5.0, -5.0]), s, scale, zp)
    assert q.dtype == np.int8
    assert q.tolist() == [0, 1, -2, 127, -127]  # -1.5 ties to even -> -2


def test_uint8_asymmetric_reference_and_nudging():
    s = QuantScheme(signed=False, symmetric=False, narrow_range=False)
    scale, zp = quant_params(s, -1.0, 3.0)
    assert scale == np.float32(4.0 / 255)
    assert zp == round(1.0 / float(scale))  # 63.75 -> 64
    # range that excludes 0 is widened to include it: 0 is exact
    scale, zp = quant_params(s, 2.0, 3.0)
    assert zp == 0 and scale == np.float32(3.0 / 255)
    assert fake_quant(np.array([0.0]), s, scale, zp)[0] == 0.0
    scale, zp = quant_params(s, -3.0, -2.0)
    assert zp == 255 and fake_quant(np.array([0.0]), s, scale, zp)[0] == 0.0


def test_rounding_modes_on_ties():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994, 0.7])
    even = QuantScheme(bits=16)
    away = QuantScheme(bits=16, rounding="half_away")
    one = np.float32(1.0)
    assert quantize(x, even, one, 0).tolist() == [0, 2, 2, 0, -2, -2, 0, 1]
    assert quantize(x, away, one, 0).tolist() == [1, 2, 3, -1, -2, -3, 0, 1]


@FAST
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=30), st.lists(st.booleans(), min_size=30, max_size=30))
def test_half_away_and_half_even_differ_exactly_on_ties(ints, tie_flags):
    # n + 0.5 is a tie; n + 0.25 is not. Modes must agree off ties and differ only where the
    # tie's even neighbour is toward zero.
    x = np.array([n + (0.5 if t else 0.25) for n, t in zip(ints, tie_flags)], dtype=np.float64)
    even = quantize(x, QuantScheme(bits=16), np.float32(1.0), 0).astype(np.int64)
    away = quantize(x, QuantScheme(bits=16, rounding="half_away"), np.float32(1.0), 0).astype(np.int64)
    ties = np.array(tie_flags[: len(ints)])
    expected_diff = ties & (np.floor(np.abs(x)).astype(np.int64) % 2 == 0)
    assert np.array_equal(even != away, expected_diff)
    assert np.all(np.abs(away) >= np.abs(even))


# --- properties of the uniform quantiser ---------------------------------------------------------
@FAST
@given(scheme_st, ranges(), values_st)
def test_round_trip_error_within_half_step_inside_range(scheme, rng, x):
    lo, hi = rng
    scale, zp = quant_params(scheme, lo, hi)
    s = float(scale)
    xr_lo = (scheme.qmin - int(zp)) * s
    xr_hi = (scheme.qmax - int(zp)) * s
    x = np.clip(x, xr_lo, xr_hi)
    err = np.abs(fake_quant(x, scheme, scale, zp) - x)
    assert np.all(err <= s / 2 * (1 + 1e-9) + 1e-12)


@FAST
@given(scheme_st, ranges(), values_st)
def test_clamps_outside_range(scheme, rng, x):
    scale, zp = quant_params(scheme, *rng)
    q = quantize(x * 1e3, scheme, scale, zp).astype(np.int64)
    assert q.min() >= scheme.qmin and q.max() <= scheme.qmax
    big = quantize(np.array([1e12, -1e12]), scheme, scale, zp).astype(np.int64)
    assert big.tolist() == [scheme.qmax, scheme.qmin]


@FAST
@given(scheme_st, ranges(), values_st)
def test_fake_quant_idempotent_and_monotone(scheme, rng, x):
    scale, zp = quant_params(scheme, *rng)
    y = fake_quant(x, scheme, scale, zp)
    assert np.array_equal(fake_quant(y, scheme, scale, zp), y)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(y[order]) >= 0)


@FAST
@given(scheme_st, ranges(), values_st, st.integers(-20, 20))
def test_scale_invariance_power_of_two(scheme, rng, x, k):
    # multiplying data and range by 2**k changes nothing but the unit
    f = 2.0 ** k
    scale, zp = quant_params(scheme, *rng)
    scale_f, zp_f = quant_params(scheme, rng[0] * f, rng[1] * f)
    assert scale_f == np.float32(scale * f) and zp_f == zp
    assert np.array_equal(quantize(x * f, scheme, scale_f, zp_f), quantize(x, scheme, scale, zp))


@FAST
@given(st.lists(finite, min_size=2, max_size=12), st.sampled_from([0, 1, -1]))
def test_per_channel_on_a_single_channel_equals_per_tensor(vals, axis):
    # the channel axis has length 1: axis 0 of a (1, n) tensor, axis 1 / -1 of an (n, 1) tensor
    w = np.asarray(vals, dtype=np.float64).reshape(-1, 1) if axis != 0 else np.asarray(vals).reshape(1, -1)
    pc = QuantScheme(granularity="per_channel", axis=axis)
    pt = QuantScheme()
    lo_c, hi_c = weight_ranges(w, pc)
    lo_t, hi_t = weight_ranges(w, pt)
    assert lo_c.shape == (1,) and float(lo_c[0]) == float(lo_t) and float(hi_c[0]) == float(hi_t)
    sc, zc = quant_params(pc, lo_c, hi_c)
    st_, zt = quant_params(pt, lo_t, hi_t)
    assert np.array_equal(quantize(w, pc, sc, zc), quantize(w, pt, st_, zt))
    assert np.array_equal(fake_quant(w, pc, sc, zc), fake_quant(w, pt, st_, zt))


def test_per_channel_uses_each_channels_scale():
    w = np.zeros((3, 2, 2, 2), dtype=np.float32)
    w[0] = 1.0
    w[1, 0, 0, 0] = -4.0
    # channel 2 is dead (all zero)
    s = QuantScheme(granularity="per_channel", axis=0)
    scale, zp = quant_params(s, *weight_ranges(w, s))
    assert scale.shape == (3,) and scale.dtype == np.float32
    assert scale[0] == np.float32(1 / 127) and scale[1] == np.float32(4 / 127)
    assert scale[2] == 1.0 and np.all(np.isfinite(scale))
    q = quantize(w, s, scale, zp)
    assert np.all(q[0] == 127) and q[1, 0, 0, 0] == -127 and np.all(q[2] == 0)
    assert np.array_equal(fake_quant(w, s, scale, zp)[2], w[2])


# --- edge cases ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES + [QuantScheme(domain="log2")], ids=str)
def test_zero_range_gives_unit_scale_and_exact_zero(scheme):
    scale, zp = quant_params(scheme, 0.0, 0.0)
    assert np.isfinite(scale) and scale > 0
    if scheme.domain == "uniform":
        assert scale == 1.0
    assert fake_quant(np.zeros(4), scheme, scale, zp).tolist() == [0.0] * 4


def test_tiny_range_never_gives_zero_scale():
    scale, _ = quant_params(QuantScheme(), -1e-44, 1e-44)
    assert scale == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_ranges_and_data_raise_numeric_error(bad):
    s = QuantScheme()
    with pytest.raises(NumericError):
        quant_params(s, bad, 1.0)
    with pytest.raises(NumericError):
        quantize(np.array([0.0, bad]), s, np.float32(0.1), 0)
    with pytest.raises(NumericError):
        weight_ranges(np.array([[1.0, bad]]), s)
    with pytest.raises(NumericError):
        quant_params(QuantScheme(domain="log2"), 0.0, bad)


def test_inverted_range_is_a_calibration_error():
    with pytest.raises(CalibrationError):
        quant_params(QuantScheme(symmetric=False), 1.0, -1.0)


def test_per_tensor_scheme_rejects_vector_range():
    with pytest.raises(ValueError):
        quant_params(QuantScheme(), np.array([0.0, 1.0]), np.array([1.0, 2.0]))


# --- log2 (NNIE) -----------------------------------------------------------------------------------
def test_log2_params_reference():
    s8 = QuantScheme(domain="log2")
    c, z = log2_params(s8, 2.0)
    assert c == 2.0 and z == 16 - 127
    c, z = log2_params(s8, 0.3)
    assert z == round(16 * math.log2(0.3)) - 127
    _, z16 = log2_params(QuantScheme(domain="log2", bits=16), 2.0)
    assert z16 == 2048 - 32767
    scale, zp = quant_params(s8, -0.3, 0.1)
    assert zp == z and scale == np.float32(2.0 ** (z / 16))


def test_log2_code_layout():
    s = QuantScheme(domain="log2")
    scale, z = quant_params(s, -2.0, 2.0)  # z = -111: codes 0..127 cover 2**(-111/16) .. 2**1
    x = np.array([0.0, 2.0, -2.0, 100.0, 1.0, -0.5, 2.0 ** (-111 / 16), 2.0 ** (-111 / 16) * 0.49])
    q = quantize(x, s, scale, z)
    assert q.dtype == np.int16
    assert q.tolist() == [0, 128, -128, 128, 112, -96, 1, 0]
    assert fake_quant(x, s, scale, z).tolist() == pytest.approx(
        [0.0, 2.0, -2.0, 2.0, 1.0, -0.5, 2.0 ** (-111 / 16), 0.0], rel=1e-12)


@FAST
@given(st.sampled_from([8, 16]), st.floats(min_value=1e-3, max_value=1e3),
       st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30), st.booleans())
def test_log2_relative_error_within_half_a_level(bits, clip, fracs, negative):
    s = QuantScheme(domain="log2", bits=bits)
    scale, z = quant_params(s, -clip, clip)
    levels = s.levels_per_octave
    smallest = 2.0 ** (int(z) / levels)
    top = 2.0 ** ((int(z) + s.qmax) / levels)
    # log-uniform samples between the smallest and the top level
    x = np.exp(np.log(smallest) + np.asarray(fracs) * (np.log(top) - np.log(smallest)))
    x = -x if negative else x
    y = fake_quant(x, s, scale, z)
    rel = np.abs(y - x) / np.abs(x)
    assert np.all(rel <= (2.0 ** (1 / (2 * levels)) - 1) * (1 + 1e-6))
    assert np.all(np.sign(y) == np.sign(x))
    assert np.array_equal(fake_quant(y, s, scale, z), y)


def test_log2_flush_and_clamp():
    s = QuantScheme(domain="log2")
    scale, z = quant_params(s, 0.0, 1.0)
    smallest = 2.0 ** (int(z) / 16)
    top = 2.0 ** ((int(z) + 127) / 16)
    x = np.array([smallest * 0.49, smallest * 0.51, 1e9, -1e9])
    assert fake_quant(x, s, scale, z).tolist() == pytest.approx([0.0, smallest, top, -top])


def test_dequantize_matches_float32_multiply():
    s = QuantScheme(signed=False, symmetric=False, narrow_range=False)
    scale, zp = quant_params(s, -0.7, 5.3)
    q = np.arange(256, dtype=np.uint8)
    expected = (q.astype(np.float32) - np.float32(zp)) * scale  # ORT DequantizeLinear in float32
    assert np.array_equal(dequantize(q, s, scale, zp), expected)
