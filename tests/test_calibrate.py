"""Calibrators against independent references, sharded == one pass, determinism, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.errors import CalibrationError, ConfigError, NumericError
from harness.quant.calibrate import (
    CalibrationRange,
    EntropyCalibrator,
    MinMaxCalibrator,
    MseCalibrator,
    PercentileCalibrator,
    kl_threshold,
    make_calibrator,
    mse_threshold,
)
from harness.quant.scheme import QuantScheme, fake_quant, quant_params


# --- independent references (plain loops; they do not call harness code) -------------------------
def reference_kl_threshold(hist: np.ndarray, absmax: float, levels: int = 128) -> float:
    """The spec, one candidate at a time: clip + fold, merge to `levels`, expand over non-zero bins."""
    hist = np.asarray(hist, dtype=np.int64)
    nbins = len(hist)
    best_i, best_kl = None, math.inf
    for i in range(levels, nbins):
        p = hist[:i].astype(np.float64)
        p[i - 1] += hist[i:].sum()
        source = hist[:i].astype(np.float64)
        level_of = np.array([b * levels // i for b in range(i)])
        level_sum = np.bincount(level_of, weights=source, minlength=levels)
        level_nonzero = np.bincount(level_of, weights=(source != 0).astype(np.float64), minlength=levels)
        q = np.zeros(i)
        for b in range(i):
            if source[b] != 0:
                q[b] = level_sum[level_of[b]] / level_nonzero[level_of[b]]
        if q.sum() == 0:
            continue
        p = p / p.sum()
        q = q / q.sum()
        support = p > 0
        if np.any(q[support] == 0):
            continue  # infinite divergence
        kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
        if kl < best_kl:
            best_i, best_kl = i, kl
    if best_i is None:
        return absmax
    return (best_i + 0.5) * absmax / nbins


def reference_mse_threshold(hist: np.ndarray, absmax: float, bits: int) -> float:
    nbins = len(hist)
    width = absmax / nbins
    qmax = 2 ** (bits - 1) - 1
    best_k, best = None, math.inf
    for k in range(1, nbins + 1):
        t = k * width
        cost = 0.0
        for b, n in enumerate(hist):
            c = (b + 0.5) * width
            cost += n * ((c - t) ** 2 if c > t else (t / qmax) ** 2 / 12)
        if cost < best * (1 - 1e-12):
            best_k, best = k, cost
    return best_k * width


def run(cal, batches):
    """The runner protocol: pass one, begin_second_pass if needed, pass two."""
    for b in batches:
        cal.partial_fit(b)
    if cal.two_pass:
        cal.begin_second_pass()
        for b in batches:
            cal.partial_fit(b)
    return cal.compute()


def batches_of(x: np.ndarray, n: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(c) for c in np.array_split(x, n)]


RNG_SEED = 20240611


def data(kind: str, n: int = 200_000) -> np.ndarray:
    rng = np.random.default_rng(RNG_SEED)
    if kind == "gauss":
        x = rng.standard_normal(n)
    elif kind == "laplace":
        x = rng.laplace(size=n)
    elif kind == "outliers":
        x = rng.standard_normal(n)
        x[rng.choice(n, 20, replace=False)] = rng.uniform(20, 60, 20) * rng.choice([-1, 1], 20)
    elif kind == "relu":
        x = np.maximum(rng.standard_normal(n) * 2 + 0.5, 0)
    else:
        raise ValueError(kind)
    return x.astype(np.float32).reshape(-1, 100)


# --- KL ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gauss", "laplace", "outliers"])
def test_kl_matches_reference_implementation(kind):
    x = data(kind)
    cal = make_calibrator("kl", bins=512, levels=64)
    rng = run(cal, batches_of(x, 4))
    a = np.abs(x.astype(np.float64)).ravel()
    absmax = float(a.max())
    ref_hist, _ = np.histogram(a[a != 0], bins=512, range=(0.0, absmax))
    assert np.array_equal(cal.hist_, ref_hist)
    assert rng.threshold == reference_kl_threshold(ref_hist, absmax, levels=64)
    assert rng.method == "kl" and rng.lo == -rng.threshold and rng.hi == rng.threshold


def test_kl_full_size_matches_reference_on_outliers():
    x = data("outliers")
    cal = make_calibrator("entropy")
    rng = run(cal, [x])
    assert cal.hist_.size == 2048
    ref = reference_kl_threshold(cal.hist_, cal.edge_hi_, levels=128)
    assert rng.threshold == ref
    assert rng.threshold < 0.5 * cal.edge_hi_  # the outliers must be clipped


def test_kl_with_zeros_counted_matches_reference():
    x = data("relu")
    cal = make_calibrator("kl", bins=256, levels=32, ignore_zeros=False)
    rng = run(cal, [x])
    hist = cal.hist_.copy()
    hist[0] += int(np.count_nonzero(x == 0))
    assert rng.threshold == reference_kl_threshold(hist, cal.edge_hi_, levels=32)
    assert rng.lo == 0.0  # ReLU output: clip intersected with the observed range


def test_kl_edge_cases():
    assert kl_threshold(np.zeros(2048, dtype=np.int64), 1.0) == 0.0
    # two spikes with an empty middle: every candidate folds outliers into an empty bin
    h = np.zeros(2048, dtype=np.int64)
    h[0], h[-1] = 1000, 1
    assert kl_threshold(h, 3.0) == 3.0
    zeros = make_calibrator("kl")
    assert run(zeros, [np.zeros((4, 4), np.float32)]).threshold == 0.0


@pytest.mark.parametrize("method", ["kl", "percentile", "mse", "minmax"])
def test_sharded_equals_one_pass_exactly(method):
    x = data("outliers")
    one = run(make_calibrator(method), batches_of(x, 5))

    shards = [make_calibrator(method) for _ in range(3)]
    parts = [x[:333], x[333:1000], x[1000:]]
    for shard, part in zip(shards, parts):
        for b in batches_of(part, 2):
            shard.partial_fit(b)
    total = make_calibrator(method)
    for shard in shards:
        total.merge(shard)
    if total.two_pass:
        shared = (total.min_, total.max_)
        merged = make_calibrator(method).begin_second_pass(observed=shared)
        for shard, part in zip(shards, parts):
            shard.begin_second_pass(observed=shared)
            for b in batches_of(part, 3):
                shard.partial_fit(b)
        for shard in reversed(shards):  # merge order must not matter
            merged.merge(shard)
        total = merged
    sharded = total.compute()
    assert sharded == one
    assert np.float64(sharded.threshold).tobytes() == np.float64(one.threshold).tobytes()


@pytest.mark.parametrize("method", ["kl", "percentile", "mse"])
def test_deterministic_byte_identical(method):
    x = data("laplace")
    a = run(make_calibrator(method), batches_of(x, 3))
    b = run(make_calibrator(method), batches_of(x, 7))
    assert np.array([a.lo, a.hi, a.threshold]).tobytes() == np.array([b.lo, b.hi, b.threshold]).tobytes()


def test_memory_holds_histograms_only():
    cal = make_calibrator("kl")
    batch = data("gauss", 100_000)
    cal.partial_fit(batch)
    cal.begin_second_pass()
    for _ in range(5):
        cal.partial_fit(batch)
    held = sum(v.nbytes for v in vars(cal).values() if isinstance(v, np.ndarray))
    assert held <= 2048 * 8


# --- minmax ---------------------------------------------------------------------------------------
def test_minmax_matches_numpy():
    x = data("laplace")
    rng = run(make_calibrator("minmax"), batches_of(x, 4))
    assert (rng.lo, rng.hi) == (float(x.min()), float(x.max()))
    assert rng.threshold == max(-rng.lo, rng.hi) and rng.observed_min == rng.lo


def test_minmax_moving_average_hand_computed():
    cal = MinMaxCalibrator(momentum=0.5)
    cal.partial_fit(np.array([0.0, 4.0]))
    cal.partial_fit(np.array([-2.0, 2.0]))
    cal.partial_fit(np.array([-4.0, 1.0]))
    rng = cal.compute()
    assert rng.lo == 0.5 * (0.5 * 0.0 + 0.5 * -2.0) + 0.5 * -4.0  # -2.5
    assert rng.hi == 0.5 * (0.5 * 4.0 + 0.5 * 2.0) + 0.5 * 1.0  # 2.0
    with pytest.raises(CalibrationError, match="order"):
        cal.merge(MinMaxCalibrator(momentum=0.5).partial_fit(np.ones(3)))


def test_minmax_is_single_pass():
    cal = make_calibrator("minmax").partial_fit(np.ones(3))
    assert not cal.two_pass
    with pytest.raises(CalibrationError):
        cal.begin_second_pass()


# --- percentile -----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99, 100.0])
def test_percentile_symmetric_against_numpy(p):
    x = data("laplace")
    rng = run(make_calibrator("percentile", percentile=p), batches_of(x, 3))
    a = np.abs(x.astype(np.float64))
    width = a.max() / 2048
    exact = np.percentile(a, p)
    assert exact - 1e-12 <= rng.threshold <= exact + width + 1e-12
    assert np.count_nonzero(a > rng.threshold) <= (1 - p / 100) * a.size


def test_percentile_asymmetric_both_tails():
    x = data("relu") - 1.0
    rng = run(make_calibrator("percentile", percentile=99.0, symmetric=False), batches_of(x, 2))
    v = x.astype(np.float64)
    width = (v.max() - v.min()) / 2048
    assert abs(rng.hi - np.percentile(v, 99.0)) <= width + 1e-12
    assert abs(rng.lo - np.percentile(v, 1.0)) <= width + 1e-12
    assert rng.threshold == max(abs(rng.lo), abs(rng.hi))


def test_percentile_hand_computed():
    # 1..100 in 200 bins of width 0.5 (value v in bin [v, v + 0.5)): the smallest edge with at most
    # 5 values (96..100) beyond it is the upper edge of 95's bin
    x = np.arange(1, 101, dtype=np.float64)
    rng = run(make_calibrator("percentile", percentile=95.0, bins=200), [x])
    assert rng.threshold == 95.5


# --- MSE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, bits", [("gauss", 8), ("gauss", 4), ("outliers", 8), ("laplace", 6)])
def test_mse_matches_reference_objective(kind, bits):
    x = data(kind)
    cal = make_calibrator("mse", bits=bits, bins=256)
    rng = run(cal, [x])
    assert rng.threshold == pytest.approx(reference_mse_threshold(cal.hist_, cal.edge_hi_, bits), abs=0, rel=1e-12)


def test_mse_reduces_real_error_and_tightens_with_fewer_bits():
    x = data("outliers").astype(np.float64).ravel()
    t8 = run(make_calibrator("mse", bits=8), [x]).threshold
    t4 = run(make_calibrator("mse", bits=4), [x]).threshold
    assert t4 < t8 < np.abs(x).max()

    def real_mse(t: float, bits: int) -> float:
        s = QuantScheme(bits=16) if bits > 8 else QuantScheme()
        scale = np.float32(t / (2 ** (bits - 1) - 1))
        q = np.clip(np.rint(x / scale), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        assert s  # the scheme object is only a reminder of the grid used
        return float(np.mean((q * scale - x) ** 2))

    assert real_mse(t8, 8) < real_mse(np.abs(x).max(), 8)
    assert mse_threshold(np.zeros(16, np.int64), 1.0) == 0.0


def test_mse_uniform_data_keeps_whole_range():
    x = np.linspace(-1, 1, 100_001)
    t = run(make_calibrator("mse"), [x]).threshold
    assert t >= 0.99


# --- registry and refusals ------------------------------------------------------------------------
def test_registry():
    assert isinstance(make_calibrator("minmax"), MinMaxCalibrator)
    assert isinstance(make_calibrator("percentile"), PercentileCalibrator)
    assert isinstance(make_calibrator("kl"), EntropyCalibrator)
    assert isinstance(make_calibrator("ENTROPY"), EntropyCalibrator)
    assert isinstance(make_calibrator("mse"), MseCalibrator)
    with pytest.raises(ConfigError, match="minmax, percentile, kl, entropy, mse"):
        make_calibrator("kld")
    with pytest.raises(ConfigError, match="percentil"):
        make_calibrator("percentile", percentil=99.0)
    for method, params in [("percentile", {"percentile": 0}), ("percentile", {"percentile": 101}),
                           ("kl", {"bins": 3}), ("mse", {"bits": 1}), ("minmax", {"momentum": 1.5}),
                           ("kl", {"levels": 4096})]:
        with pytest.raises(ConfigError):
            make_calibrator(method, **params)


def test_init_stores_parameters_only():
    cal = EntropyCalibrator(bins=1024)
    assert not [k for k in vars(cal) if k.endswith("_")]
    cal.partial_fit(np.ones(4))
    assert cal.phase_ == "range"
    cal.reset()
    assert not [k for k in vars(cal) if k.endswith("_")] and cal.bins == 1024


@pytest.mark.parametrize("method", ["minmax", "kl", "percentile", "mse"])
def test_refusals(method):
    with pytest.raises(CalibrationError, match="no data"):
        make_calibrator(method).compute()
    with pytest.raises(NumericError):
        make_calibrator(method).partial_fit(np.array([1.0, np.nan]))
    with pytest.raises(NumericError):
        make_calibrator(method).partial_fit(np.array([1.0, np.inf]))
    cal = make_calibrator(method).partial_fit(np.empty((0, 3)))  # empty batches are ignored
    with pytest.raises(CalibrationError):
        cal.compute()


def test_two_pass_refusals():
    cal = make_calibrator("kl").partial_fit(np.array([1.0, -2.0]))
    with pytest.raises(CalibrationError, match="range pass"):
        cal.compute()
    with pytest.raises(CalibrationError, match="narrower"):
        make_calibrator("kl").partial_fit(np.array([5.0])).begin_second_pass(observed=(0.0, 1.0))
    cal.begin_second_pass()
    with pytest.raises(CalibrationError, match="no data in its histogram pass"):
        cal.compute()
    with pytest.raises(CalibrationError, match="same pass"):
        cal.merge(make_calibrator("kl").partial_fit(np.ones(2)))
    other = make_calibrator("kl").partial_fit(np.array([7.0])).begin_second_pass()
    with pytest.raises(CalibrationError, match="different edges"):
        cal.merge(other)
    with pytest.raises(CalibrationError, match="same class"):
        cal.merge(make_calibrator("mse"))
    with pytest.raises(NumericError):
        cal.partial_fit(np.array([np.nan]))


def test_values_outside_frozen_edges_are_counted():
    cal = make_calibrator("percentile", percentile=100.0).partial_fit(np.array([1.0]))
    cal.begin_second_pass()
    cal.partial_fit(np.array([0.5, 3.0]))
    assert cal.n_clipped_ == 1 and cal.compute().threshold == 1.0


def test_range_feeds_quant_params():
    rng = run(make_calibrator("kl"), [data("relu")])
    assert isinstance(rng, CalibrationRange)
    s = QuantScheme(signed=False, symmetric=False, narrow_range=False)
    scale, zp = quant_params(s, rng.lo, rng.hi)
    assert zp == 0 and np.isclose(scale * 255, rng.hi, rtol=1e-6)
    assert np.all(np.isfinite(fake_quant(data("relu"), s, scale, zp)))
