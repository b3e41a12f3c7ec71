"""bmrt_test's float rule with an absolute floor: hand-computed cases (the near-zero reference that exploded),
properties, and the ``outputs`` check driven to fail with 8-bit activations, naming element, image and values."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.compare.stats import BMRT_FLOOR, bmrt_allclose, bmrt_errors
from harness.engine.checks import outputs
from harness.engine.stages import SuiteStages
from harness.suite import load_suite
from model_factory import depthwise_model
from test_plugin import write_suite

# (a, b, error by hand): the floor is 1, the switch of bmrt_test's rule.
HAND = [
    (0.5, 0.52, 0.02),              # both <= 1: absolute |a-b|
    (2.0, 2.03, 0.015),             # both > 1: relative 0.03 / 2
    (-0.0033, 1.5, 1.5033),         # the logit that exploded: literal rule 1.5033 / 0.0033 = 455.5
    (1.1375, -0.0004, 1.1379),      # MobileNetV2 rocket.jpg, literal rule 2845
    (1.5, 0.5, 1.0),                # one side > 1, the other < 1: |a-b| / max(0.5, 1)
    (-3.0, 3.0, 2.0),               # signs differ, both > 1: 6 / 3
    (5.0, 0.0, 5.0),                # literal rule: 5 / 0 = inf
    (1.0, 1.0, 0.0),
]


@pytest.mark.parametrize(("a", "b", "expected"), HAND)
def test_hand_computed_errors(a: float, b: float, expected: float) -> None:
    assert bmrt_errors(np.array([a]), np.array([b]))[0] == pytest.approx(expected, rel=1e-12)


def test_near_zero_reference_no_longer_decides_the_verdict() -> None:
    """999 logits within 0.05 and one with reference -0.0033 against 1.5: the literal rule reports 455;
    floored, the worst error is that element's absolute difference, and it is reported with both values."""
    ref = np.linspace(-4.0, 4.0, 1000).reshape(1, 1000)
    test = ref + 0.02
    ref[0, 417], test[0, 417] = -0.0033, 1.5
    r = bmrt_allclose(ref, test, tol=2.0)
    assert r.passed and r.worst_error == pytest.approx(1.5033)
    assert r.worst_flat_index == 417 and r.worst_index == (0, 417)
    assert (r.worst_ref, r.worst_test) == (-0.0033, 1.5)
    literal = abs(-0.0033 - 1.5) / 0.0033
    assert literal > 450 and not bmrt_allclose(ref, test, tol=2.0, floor=1e-9)  # the old rule, floor ~ 0


def test_nan_and_inf() -> None:
    r = bmrt_allclose(np.array([1.0, np.nan, np.inf, 2.0]), np.array([1.0, np.nan, np.inf, np.inf]))
    assert r.nonfinite == 2 and r.violations == 2 and r.worst_error == math.inf  # NaN never passes
    assert "2 elements are NaN/Inf" in r.summary()
    with pytest.raises(ValueError, match="floor"):
        bmrt_errors(np.zeros(2), np.zeros(2), floor=0.0)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=40))
def test_symmetric_bounded_and_zero_on_equal(pairs: list[tuple[float, float]]) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    err = bmrt_errors(a, b)
    np.testing.assert_array_equal(err, bmrt_errors(b, a))
    assert np.all(bmrt_errors(a, a) == 0.0)
    assert np.all(err <= np.abs(a - b) * (1 + 1e-12))  # the denominator is never below 1
    assert np.all(err >= 0.0)


@settings(max_examples=300, deadline=None)
@given(finite, finite, st.floats(min_value=1.0, max_value=1e3))
def test_relative_regime_is_scale_invariant(a: float, b: float, c: float) -> None:
    """Once both magnitudes are >= the floor, the error is bmrt_test's relative error, unchanged by scaling both
    by c >= 1 (scaling keeps them in that regime)."""
    if min(abs(a), abs(b)) < BMRT_FLOOR:
        a, b = math.copysign(abs(a) + 1.0, a), math.copysign(abs(b) + 1.0, b)
    one = bmrt_errors(np.array([a]), np.array([b]))[0]
    scaled = bmrt_errors(np.array([a * c]), np.array([b * c]))[0]
    assert scaled == pytest.approx(one, rel=1e-9, abs=1e-12)
    assert one == pytest.approx(abs(a - b) / min(abs(a), abs(b)), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1.0, max_value=1.0), st.floats(min_value=1e-9, max_value=1e-3))
def test_continuous_at_the_switch(b: float, eps: float) -> None:
    """At max(|a|,|b|) = 1 both branches give |a-b|: moving a from 1 to 1 + eps moves the error by at most eps."""
    at = bmrt_errors(np.array([1.0]), np.array([b]))[0]
    above = bmrt_errors(np.array([1.0 + eps]), np.array([b]))[0]
    assert at == pytest.approx(abs(1.0 - b))
    assert abs(above - at) <= eps * (1 + 1e-9) + 1e-12


# --- the outputs check, 8-bit activations -------------------------------------------------------------------
@pytest.fixture
def stages(tmp_path: Path) -> SuiteStages:
    onnx.save(depthwise_model(), str(tmp_path / "model.onnx"))
    for folder, seed0, n in (("eval", 0, 3), ("calib", 100, 4)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            image = np.random.default_rng(seed0 + i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / folder / f"img_{i}.png"), image)
    path = write_suite(tmp_path, name="tiny8")  # the plugin tests' layers suite, with 8-bit activations here
    path.write_text(path.read_text().replace("activation_bits = 16\n", "").replace("probe_images = 2", "probe_images = 3"))
    return SuiteStages(load_suite(path), golden_root=tmp_path / "golden")


def test_outputs_check_with_8bit_activations_fails_on_a_kernel_mismatch_and_names_it(stages: SuiteStages) -> None:
    """The check compares over every probe image: a mismatch planted on the last image is found, and the message
    names its element, image and both values."""
    assert stages.profile.activation_scheme.bits == 8  # the int8-kernel comparison runs
    run = stages.quant_probe
    ok = outputs(stages)
    bmrt = [v for v in ok.verdicts if v.check == "bmrt"]
    assert len(bmrt) == 1 and bmrt[0].observed < 1.0
    sim = run.outputs["logits"][2]
    run.kernel_outputs["logits"][2] = sim.copy()
    run.kernel_outputs["logits"][2][0, 1] = sim[0, 1] + 3.0  # one element of the third probe image
    bad = next(v for v in outputs(stages).verdicts if v.check == "bmrt")
    assert not bad.passed
    expected = 3.0 / max(min(abs(sim[0, 1]), abs(sim[0, 1] + 3.0)), 1.0)
    assert bad.observed == pytest.approx(expected, rel=1e-6)
    image = str(stages.data.probes[2].image_id)
    assert f"worst element 1 (0, 1) on probe image {image!r}" in bad.message
    assert f"simulate {sim[0, 1]:.6g}, int8-kernels {sim[0, 1] + 3.0:.6g}" in bad.message
    assert bad.details["worst_image"] == image and bad.details["worst_coords"] == [0, 1]
