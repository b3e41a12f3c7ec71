"""Per-tensor statistics: hand-computed values, documented edge cases, streaming == one pass,
bmrt_test's rule, and tolerances (glob overrides, provenance, minimum passing tolerance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.compare import (
    PRESETS,
    TensorStats,
    Tolerance,
    ToleranceSet,
    bmrt_allclose,
    parse_tolerance_spec,
    raise_if_nonfinite,
    tensor_stats,
)
from harness.errors import ConfigError, NumericError


def test_hand_computed_values() -> None:
    r = tensor_stats(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0], dtype=np.float32))
    assert r.count == 3 and r.nonfinite_count == 0
    assert r.cosine == pytest.approx(17 / math.sqrt(14 * 21), rel=1e-12)
    assert r.euclid_similarity == pytest.approx(1 - 1 / math.sqrt(17.25), rel=1e-12)
    assert r.sqnr_db == pytest.approx(20 * math.log10(math.sqrt(14) / 1.0), rel=1e-12)
    assert r.nmse == pytest.approx(1 / 14, rel=1e-12)
    assert r.mae == pytest.approx(1 / 3, rel=1e-12)
    assert r.max_abs_error == 1.0 and r.max_abs_error_index == 2
    assert (r.ref_min, r.ref_max, r.ref_absmax) == (1.0, 3.0, 3.0)
    assert r.ref_mean == pytest.approx(2.0) and r.ref_std == pytest.approx(np.std([1, 2, 3]))


def test_matches_independent_numpy_formulas() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    y = x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    xf, yf = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    r = tensor_stats(x, y)
    assert r.cosine == pytest.approx(xf @ yf / np.linalg.norm(xf) / np.linalg.norm(yf), rel=1e-10)
    assert r.euclid_similarity == pytest.approx(1 - np.linalg.norm(xf - yf) / np.linalg.norm((xf + yf) / 2), rel=1e-10)
    assert r.sqnr_db == pytest.approx(20 * np.log10(np.linalg.norm(xf) / np.linalg.norm(xf - yf)), rel=1e-10)
    assert r.max_abs_error == pytest.approx(np.abs(xf - yf).max())


def test_identical_tensors() -> None:
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    r = tensor_stats(x, x.copy())
    assert r.cosine == 1.0 and r.euclid_similarity == 1.0
    assert r.sqnr_db == math.inf and r.nmse == 0.0 and r.max_abs_error == 0.0


def test_zero_conventions() -> None:
    z = np.zeros(8)
    both = tensor_stats(z, z)
    assert both.cosine == 1.0 and both.euclid_similarity == 1.0 and both.sqnr_db == math.inf
    ref_zero = tensor_stats(z, np.ones(8))
    assert ref_zero.cosine == 0.0 and ref_zero.sqnr_db == -math.inf and ref_zero.nmse == math.inf
    test_zero = tensor_stats(np.ones(8), z)
    assert test_zero.cosine == 0.0 and test_zero.sqnr_db == pytest.approx(0.0)
    opposite = tensor_stats(np.ones(4), -np.ones(4))
    assert opposite.cosine == -1.0 and opposite.euclid_similarity == -math.inf


def test_nonfinite_is_counted_not_propagated() -> None:
    x = np.array([1.0, 2.0, np.nan, 4.0])
    y = np.array([1.0, np.inf, 3.0, 4.5])
    r = tensor_stats(x, y)
    assert r.nonfinite_count == 2 and r.count == 2 and r.has_nonfinite
    assert math.isfinite(r.cosine) and r.max_abs_error == 0.5 and r.max_abs_error_index == 3
    with pytest.raises(NumericError, match="'conv3_out'.*2 NaN/Inf"):
        raise_if_nonfinite("conv3_out", r)
    raise_if_nonfinite("ok", tensor_stats(np.ones(3), np.ones(3)))


def test_all_nonfinite_gives_nan_and_fails_tolerance() -> None:
    r = tensor_stats(np.full(3, np.nan), np.ones(3))
    assert r.count == 0 and math.isnan(r.cosine)
    assert not Tolerance.of(cosine=0.5).check("t", r)


def test_size_mismatch_is_a_bug() -> None:
    with pytest.raises(ValueError):
        TensorStats().update(np.ones(3), np.ones(4))


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(data=hnp.arrays(np.float32, st.integers(1, 60), elements=finite),
       noise=hnp.arrays(np.float32, 60, elements=finite), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_streaming_and_merge_equal_one_pass(data: np.ndarray, noise: np.ndarray, cuts: list[int]) -> None:
    test = data + noise[: data.size]
    one = tensor_stats(data, test)
    bounds = sorted({0, data.size, *[c % (data.size + 1) for c in cuts]})
    streamed = TensorStats()
    shards = []
    for lo, hi in zip(bounds, bounds[1:]):
        streamed.update(data[lo:hi], test[lo:hi])
        shards.append(TensorStats().update(data[lo:hi], test[lo:hi]))
    merged = TensorStats()
    for s in shards:
        merged.merge(s)
    for res in (streamed.compute(), merged.compute()):
        assert res.count == one.count
        assert res.max_abs_error == one.max_abs_error and res.max_abs_error_index == one.max_abs_error_index
        assert (res.ref_min, res.ref_max) == (one.ref_min, one.ref_max)
        for key in ("cosine", "euclid_similarity", "nmse", "mae", "ref_mean"):
            a, b = getattr(res, key), getattr(one, key)
            assert a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), key
        if math.isfinite(one.sqnr_db):
            assert res.sqnr_db == pytest.approx(one.sqnr_db, rel=1e-9, abs=1e-9)
        else:
            assert res.sqnr_db == one.sqnr_db


def test_bmrt_rule_hand_example() -> None:
    ref = np.array([[0.5, 2.0], [10.0, 0.0]])
    test = np.array([[0.505, 2.03], [10.0, 0.02]])
    r = bmrt_allclose(ref, test)  # errors: 0.005 abs, 0.015 rel, 0, 0.02 abs
    assert not r and r.violations == 2 and r.total == 4
    assert r.worst_index == (1, 1) and r.worst_error == pytest.approx(0.02)
    assert r.min_passing_tolerance == pytest.approx(0.02)
    assert bmrt_allclose(ref, test, tol=r.min_passing_tolerance)
    assert "would pass with tol >= 0.02" in r.summary()


def test_bmrt_relative_against_zero_and_nan() -> None:
    assert bmrt_allclose(np.array([5.0]), np.array([0.0])).worst_error == 5.0  # floor 1: |a-b| / 1, not / 0
    r = bmrt_allclose(np.array([1.0, 0.5]), np.array([np.nan, 0.5]))
    assert r.violations == 1 and r.worst_index == (0,)
    assert bmrt_allclose(np.array([3.0, -2.0]), np.array([3.0, -2.0])).min_passing_tolerance == 0.0


def test_tolerance_globs_first_match_and_provenance() -> None:
    tols = ToleranceSet(default=PRESETS["resnet18"], overrides=(("conv1*", Tolerance.of(cosine=0.5, source="team")),
                                                                 ("conv*", Tolerance.of(cosine=0.9))))
    assert tols.for_tensor("conv1_out").value("cosine") == 0.5
    assert tols.for_tensor("conv2_out").value("cosine") == 0.9
    assert tols.for_tensor("conv2_out").value("euclid") == 0.78  # per bound key: falls through to the default
    assert tols.for_tensor("fc").source == "preset resnet18: tpu-mlir production int8 regression, resnet18"
    assert PRESETS["tpu-mlir-tool"].source.startswith("preset tpu-mlir-tool: tpu-mlir tool default 0.99/0.99")


def test_exact_names_beat_globs_and_skip() -> None:
    tols = ToleranceSet(default=Tolerance.of(cosine=0.9, source="d"),
                        overrides=(("conv*", Tolerance.of(cosine=0.5, source="g")),
                                   ("conv3", Tolerance.of(cosine=0.8, source="e")),
                                   ("arg*", Tolerance(skip=True))))
    assert tols.for_tensor("conv3").value("cosine") == 0.8 and tols.for_tensor("conv4").value("cosine") == 0.5
    assert tols.for_tensor("argmax").skip and tols.check("argmax", tensor_stats(np.ones(3), -np.ones(3)))
    assert tols.unmatched(["conv1", "fc"]) == ["conv3", "arg*"]


def test_verdict_is_truthy_and_states_min_passing() -> None:
    stats = tensor_stats(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    v = Tolerance.of(cosine=0.999, max_abs=2.0).check("t", stats)
    assert not v and len(v.failures) == 1 and v.failures[0].key == "cosine" and "cosine" in str(v.failures[0])
    assert v.min_passing == {"cosine": stats.cosine, "max_abs": 1.0}
    assert Tolerance.of(cosine=v.min_passing["cosine"], max_abs=1.0).check("t", stats)


def test_parse_tolerance_spec() -> None:
    tols = parse_tolerance_spec(["cosine=0.9", "conv*:sqnr_db=20", "conv*:max_abs=0.1", "x:0:cosine=0.5"])
    assert tols.default.values() == {"cosine": 0.9} and tols.default.source == "command line"
    assert tols.for_tensor("conv1").values() == {"cosine": 0.9, "sqnr_db": 20.0, "max_abs": 0.1}
    assert tols.for_tensor("x:0").value("cosine") == 0.5
    assert parse_tolerance_spec(["preset=ssd300"]).default == PRESETS["ssd300"]
    for bad in ("cosine", "speed=3", "cosine=high", "preset=nope"):
        with pytest.raises(ConfigError):
            parse_tolerance_spec([bad])
