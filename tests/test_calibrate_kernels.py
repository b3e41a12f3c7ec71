"""The compiled histogram loops (numba, the `fast` extra) against the numpy path they replace: the same bins,
zero and clip counts element for element, and the same refusal of NaN/Inf, which leaves the calibrator as it was."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.errors import NumericError
from harness.quant.calibrate import kernels, make_calibrator

pytestmark = pytest.mark.skipif(kernels.numba is None, reason="numba is not installed (pip install -e '.[fast]')")


def _fill(method: str, pass_one: list[np.ndarray], pass_two: list[np.ndarray], *, compiled: bool,
          monkeypatch: pytest.MonkeyPatch, **params):
    monkeypatch.setenv(kernels.DISABLE_ENV, "0" if compiled else "1")
    cal = make_calibrator(method, **params)
    for batch in pass_one:
        cal.partial_fit(batch)
    cal.begin_second_pass()
    for batch in pass_two:
        cal.partial_fit(batch)
    return cal


def _assert_same(a, b) -> None:
    assert a.hist_.tobytes() == b.hist_.tobytes()
    assert (a.n_zero_, a.n_clipped_, a.n_filled_) == (b.n_zero_, b.n_clipped_, b.n_filled_)


# finite float32 values with many exact zeros, negative zeros and repeats, as ReLU tensors have
_values = st.one_of(st.just(0.0), st.just(-0.0), st.floats(-1e6, 1e6, width=32, allow_subnormal=True))
_arrays = hnp.arrays(np.float32, st.integers(1, 600), elements=_values)


@settings(max_examples=60, deadline=None)
@given(first=_arrays, second=_arrays, bins=st.sampled_from([8, 128, 2048]))
def test_magnitude_bins_equal_numpys(first, second, bins):
    """Values of pass two outside pass one's range exercise the clip; every other path is a plain bin."""
    with pytest.MonkeyPatch.context() as mp:
        want = _fill("percentile", [first], [first, second], compiled=False, monkeypatch=mp, bins=bins)
        got = _fill("percentile", [first], [first, second], compiled=True, monkeypatch=mp, bins=bins)
    if want.edge_hi_ > 0:  # a zero span is binned by numpy in both runs
        _assert_same(want, got)


@settings(max_examples=60, deadline=None)
@given(first=_arrays, second=_arrays)
def test_signed_bins_equal_numpys(first, second):
    with pytest.MonkeyPatch.context() as mp:
        want = _fill("percentile", [first], [first, second], compiled=False, monkeypatch=mp, symmetric=False)
        got = _fill("percentile", [first], [first, second], compiled=True, monkeypatch=mp, symmetric=False)
    _assert_same(want, got)


@pytest.mark.parametrize("method", ["kl", "mse", "percentile"])
def test_real_sized_tensors_give_identical_thresholds(method, monkeypatch):
    rng = np.random.default_rng(0)
    batches = [np.maximum(rng.standard_normal((1, 16, 56, 56)) * s, 0).astype(np.float32) for s in (0.5, 2.0, 1.0)]
    batches.append(rng.standard_normal((1, 16, 56, 56)))  # float64 data takes its own compiled loop
    want = _fill(method, batches, batches, compiled=False, monkeypatch=monkeypatch)
    got = _fill(method, batches, batches, compiled=True, monkeypatch=monkeypatch)
    _assert_same(want, got)
    assert want.compute() == got.compute()


@pytest.mark.parametrize("method, params", [("kl", {}), ("percentile", {"symmetric": False})])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_is_refused_and_changes_nothing(method, params, bad, monkeypatch):
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    data = np.linspace(-3, 3, 4001, dtype=np.float32)
    cal = make_calibrator(method, **params)
    cal.partial_fit(data)
    cal.begin_second_pass()
    cal.partial_fit(data)
    before = (cal.hist_.copy(), cal.n_zero_, cal.n_clipped_, cal.n_filled_)
    poisoned = data.copy()
    poisoned[2000] = bad
    with pytest.raises(NumericError, match="NaN or Inf"):
        cal.partial_fit(poisoned)
    assert cal.hist_.tobytes() == before[0].tobytes() and (cal.n_zero_, cal.n_clipped_, cal.n_filled_) == before[1:]


def test_the_switch_really_selects_the_path(monkeypatch):
    """Both paths above are the ones under test: the environment switch turns the compiled loops off."""
    flat = np.ones(8, np.float32)
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    assert not kernels.usable(flat)
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    assert kernels.usable(flat) and not kernels.usable(flat.astype(np.float16)) and not kernels.usable(flat[::2])
