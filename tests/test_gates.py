"""Gates on hand-made observations: bounds and sources, override precedence, least passing bound,
significance semantics, expected failures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness.compare.stats import tensor_stats
from harness.errors import ConfigError
from harness.gates import (
    Bound,
    DropGate,
    GatesConfig,
    Verdict,
    check_drop,
    check_layers,
    check_max,
    check_min,
    layer_bounds,
    resolve_expectation,
)
from harness.suite_schema import TableReader

FILE = Path("/suites/x.toml")


def config(table: dict | None = None, **kw) -> GatesConfig:
    reader = None if table is None else TableReader(table, file=FILE, table="gates")
    return GatesConfig.from_table(reader, metric_names=kw.get("names", ("map",)), headline=kw.get("headline", "map"))


def test_check_min_and_max_are_inclusive_and_truthy() -> None:
    assert check_min("layer_cosine_min", 0.99, 0.99)
    assert not check_min("layer_cosine_min", 0.9899, 0.99)
    assert check_max("output_bmrt_tol", 0.01, 0.01)
    v = check_max("output_bmrt_tol", 0.03, Bound(0.01, "default: bmrt_test"))
    assert not v and v.least_passing == 0.03 and v.op == "<=" and v.check == "bmrt"
    first, second = v.text.splitlines()
    assert "FAILED" in first and "0.03" in first and "bmrt_test" in first and "would pass with" in first
    assert "int8 kernels" in second


def test_nan_never_passes() -> None:
    v = check_min("layer_cosine_min", math.nan, 0.5)
    assert not v and "undefined" in v.message and v.least_passing is None


def test_defaults_carry_their_sources() -> None:
    cfg = config()
    assert cfg.bound("layer_cosine_min") == Bound(0.8, cfg.bound("layer_cosine_min").source)
    assert "tpu-mlir model_deploy" in cfg.bound("layer_cosine_min").source
    assert cfg.bound("layer_euclid_min").value == 0.5
    assert cfg.bound("layer_sqnr_db_min") is None  # off
    assert "bmrt_test" in cfg.bound("output_bmrt_tol").source and cfg.bound("output_bmrt_tol").value == 0.01
    assert cfg.metrics["map"].drop_max_rel.value == 0.01 and "Neural Compressor" in cfg.metrics["map"].drop_max_rel.source
    assert cfg.to_dict() == {}  # nothing was written by the author


def test_preset_then_explicit_key_wins() -> None:
    cfg = config({"preset": "mobilenet_v2", "output_cosine_min": 0.99})
    assert cfg.bound("layer_cosine_min").value == 0.95 and "mobilenet_v2" in cfg.bound("layer_cosine_min").source
    assert cfg.bound("layer_euclid_min").value == 0.69
    assert cfg.bound("output_cosine_min") == Bound(0.99, f"{FILE.name} [gates] output_cosine_min")
    assert cfg.check("output_cosine_min", 0.985).source.endswith("output_cosine_min")


OVERRIDES = {
    "layer_cosine_min": 0.99,
    "layer_sqnr_db_min": 20.0,
    "layer_overrides": {
        "conv_dw_*": {"cosine_min": 0.95},
        "conv_*": {"cosine_min": 0.90, "sqnr_db_min": 10.0},
        "conv_dw_3": {"cosine_min": 0.80},
        "argmax*": {"skip": True},
    },
}


def test_override_precedence_exact_then_globs_in_order_then_global_per_metric() -> None:
    cfg = config(OVERRIDES)
    assert layer_bounds("conv_dw_3", cfg)["cosine"].value == 0.80  # exact name beats every glob
    b = layer_bounds("conv_dw_1", cfg)
    assert b["cosine"].value == 0.95  # first matching glob in file order
    assert b["sqnr_db"].value == 10.0  # not set by conv_dw_*: falls through to conv_*, per metric
    assert b["euclid"].value == 0.5  # set by no override: the global default
    assert layer_bounds("fc", cfg)["cosine"].value == 0.99 and layer_bounds("fc", cfg)["sqnr_db"].value == 20.0
    assert layer_bounds("argmax_out", cfg) is None
    assert "conv_dw_*" in b["cosine"].source


def _stats(cosine: float, sqnr_db: float | None = None):
    """Tensor stats with an exact cosine (and, optionally, an SQNR) from a hand-built pair."""
    from tests.test_layerwise import with_cosine

    rng = np.random.default_rng(0)
    x = rng.standard_normal(256)
    return tensor_stats(x, with_cosine(x, cosine, rng))


def test_layer_report_counts_worst_first_and_least_passing() -> None:
    cfg = config(OVERRIDES)
    table = cfg.layers
    obs = [
        ("conv_1", 0.97),
        ("conv_dw_1", 0.94),  # first failing (0.94 < 0.95)
        ("conv_dw_3", 0.85),
        ("fc", 0.50),  # worst: far below 0.99
        ("argmax_out", -1.0),  # skipped
    ]
    verdicts = [table.check(name, _stats(c)) for name, c in obs]
    report = check_layers(verdicts, first_divergent="first divergent layer: conv_dw_1", remedy="keep conv_dw_1")
    assert not report
    # conv_dw_3 passes its exact cosine bound 0.8 but fails the euclid default and the SQNR bound it inherits
    # from the conv_* glob
    assert [v.name for v in report.failed] == ["conv_dw_1", "conv_dw_3", "fc"]
    assert [f.key for f in report.failed[1].failures] == ["euclid", "sqnr_db"]
    s = report.summary
    # worst = furthest beyond what its bound allows: fc's SQNR (0 dB against 20 dB is 100x the allowed noise)
    assert s.subject == "fc" and s.bound == 20.0 and s.observed == pytest.approx(0.0, abs=1e-9)
    assert s.gate == "layer_sqnr_db_min"
    assert s.details["n_layers_failed"] == 3 and s.details["n_layers"] == 4
    first, second = s.text.splitlines()
    assert "3 of 4 layers" in first and "worst fc" in first and "first divergent layer: conv_dw_1" in first
    assert second == "keep conv_dw_1"


def test_layer_report_shows_a_failing_sqnr_bound_on_a_good_cosine() -> None:
    cfg = config({"layer_sqnr_db_min": 30.0})
    v = cfg.layers.check("t", _stats(0.991))  # cosine 0.991 passes 0.8; SQNR about 17 dB does not
    assert not v and [f.key for f in v.failures] == ["sqnr_db"]
    report = check_layers([v])
    assert report.summary.gate == "layer_sqnr_db_min" and "sqnr_db=" in report.summary.message


def test_layer_report_passes_and_names_tightest() -> None:
    table = config({"layer_cosine_min": 0.99, "layer_euclid_min": 0.0}).layers
    report = check_layers([table.check("a", _stats(0.999)), table.check("b", _stats(0.995))])
    assert report and report.summary.subject == "b" and "passed" in report.summary.message


def test_drop_absolute_and_relative() -> None:
    gate = DropGate(drop_max=Bound(0.02, "suite"))
    assert check_drop("map", 0.70, 0.69, None, gate)
    v = check_drop("map", 0.70, 0.66, None, gate)
    assert not v and math.isclose(v.observed, 0.04) and math.isclose(v.least_passing, 0.04)
    rel = DropGate(drop_max_rel=Bound(0.05, "suite"))
    assert check_drop("top1", 0.80, 0.77, None, rel)  # 3.75 % relative
    v = check_drop("top1", 0.80, 0.75, None, rel)  # 6.25 %
    assert not v and math.isclose(v.observed, 0.0625) and v.gate == "metrics.top1.drop_max_rel"
    assert check_drop("top1", 0.80, 0.85, None, rel)  # int8 better: negative drop passes


def test_drop_both_limits_must_hold() -> None:
    gate = DropGate(drop_max=Bound(0.05, "a"), drop_max_rel=Bound(0.01, "r"))
    v = check_drop("map", 0.5, 0.49, None, gate)  # 0.01 absolute ok, 2 % relative not
    assert not v and v.gate.endswith("drop_max_rel")


def test_significance_semantics() -> None:
    gate = DropGate(drop_max=Bound(0.02, "suite"), require_significant=True)
    # over the limit and the CI excludes 0: fails
    assert not check_drop("map", 0.70, 0.65, (0.01, 0.09), gate)
    # over the limit but the CI includes 0: passes, and says so; no bound would have been needed
    v = check_drop("map", 0.70, 0.65, (-0.01, 0.11), gate)
    assert v and "not significant" in v.message and v.least_passing is None
    # significant but under the limit: passes
    assert check_drop("map", 0.70, 0.69, (0.005, 0.015), gate)
    # without an interval the point estimate decides, and the message says so
    v = check_drop("map", 0.70, 0.65, None, gate)
    assert not v and "point estimate decides" in v.message
    # require_significant = false: the CI is shown but does not rescue the drop
    assert not check_drop("map", 0.70, 0.65, (-0.01, 0.11), DropGate(drop_max=Bound(0.02, "s")))


def test_drop_accepts_bootstrap_result() -> None:
    import numpy as np

    from harness.metrics import paired_bootstrap

    fp32 = np.array([1.0] * 40 + [0.0] * 10)
    int8 = np.array([1.0] * 30 + [0.0] * 20)
    boot = paired_bootstrap(fp32, int8, n_resamples=300, seed=1)
    v = check_drop("top1", float(fp32.mean()), float(int8.mean()), boot,
                   DropGate(drop_max=Bound(0.1, "s"), require_significant=True))
    assert not v and v.details["significant"] and v.details["ci_low"] > 0


def test_metric_gate_config_and_require_significant_inheritance() -> None:
    cfg = config({"require_significant": True, "metrics": {"top1": {"drop_max_rel": 0.05},
                                                           "top5": {"drop_max": 0.01, "require_significant": False}}},
                 names=("top1", "top5"), headline="top1")
    assert cfg.metrics["top1"].require_significant and not cfg.metrics["top5"].require_significant
    assert cfg.metrics["top1"].drop_max is None  # replaces the default gate entirely
    with pytest.raises(ConfigError, match="drop_max and/or drop_max_rel"):
        config({"metrics": {"map": {"require_significant": True}}})


def test_gate_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match="layer_cosine_min"):
        config({"layer_cosin_min": 0.9})
    with pytest.raises(ConfigError, match="an integer"):
        config({"calibration_overlap_max": 0.5})
    with pytest.raises(ConfigError, match="is empty"):
        config({"layer_overrides": {"x*": {}}})
    with pytest.raises(ConfigError, match="ssd300"):
        config({"preset": "yolo"})


def test_round_trip_of_gates() -> None:
    table = {"preset": "ultraface", "layer_sqnr_db_min": 12.0, "require_significant": True, **{
        "layer_overrides": OVERRIDES["layer_overrides"], "metrics": {"map": {"drop_max": 0.02}}}}
    cfg = config(table)
    assert config(cfg.to_dict()) == cfg


def test_expected_failure_is_strict() -> None:
    ok = check_min("layer_cosine_min", 0.99, 0.9)
    bad = check_min("layer_cosine_min", 0.5, 0.9)
    other = check_max("input_parity_max_abs", 1.0, 0.0)
    assert resolve_expectation([ok], expect="pass", expect_reason=None)
    assert not resolve_expectation([ok, bad], expect="pass", expect_reason=None)
    assert resolve_expectation([bad], expect="fail", expect_reason="layerwise")
    xpass = resolve_expectation([ok], expect="fail", expect_reason="layerwise")
    assert not xpass and "passed" in xpass.message
    assert not resolve_expectation([ok, other], expect="fail", expect_reason="layerwise")


def test_a_must_fail_suite_fails_on_a_failure_nobody_declared() -> None:
    """Issue 13 item 7: ``expect = "fail"`` used to turn every failed check into an expected one."""
    layer = check_min("layer_cosine_min", 0.5, 0.9)
    parity = check_max("input_parity_max_abs", 1.0, 0.0)
    golden = check_max("fp32_golden_max_abs", 2.0, 1e-4)
    extra = check_max("calibration_drift_max_rel", 0.5, 0.05)
    kw = dict(expect="fail", expect_reason="input-parity")
    assert resolve_expectation([parity], **kw)
    unexpected = resolve_expectation([parity, golden], **kw)  # fp32-golden not declared
    assert not unexpected and unexpected.message.startswith("not expected: fp32-golden FAILED")
    assert unexpected.details["unexpected"] == ["fp32-golden"] and 'add "fp32-golden"' in unexpected.remedy
    declared = resolve_expectation([parity, golden], **kw, expect_also=["fp32-golden"])
    assert declared and "its consequences fp32-golden failed as declared" in declared.message
    assert not resolve_expectation([parity, golden, extra], **kw, expect_also=["fp32-golden"])
    # A declared consequence that no longer follows is not a silent pass either.
    missing = resolve_expectation([parity], **kw, expect_also=["fp32-golden"])
    assert not missing and missing.details["missing"] == ["fp32-golden"] and "expect_also" in missing.remedy
    assert not resolve_expectation([layer], **kw, expect_also=["layerwise"])  # expect_reason itself passed


def test_a_golden_written_this_run_is_never_an_expected_failure() -> None:
    parity = check_max("input_parity_max_abs", 1.0, 0.0)
    fresh = Verdict(check="fp32-golden", gate="golden", passed=False, observed=math.nan, bound=math.nan, op="<=",
                    source="harness", least_passing=None, message="fp32-golden: golden was missing",
                    remedy="run again to confirm")
    verdict = resolve_expectation([parity, fresh], expect="fail", expect_reason="input-parity",
                                  expect_also=["fp32-golden"])
    assert not verdict and verdict.remedy == "run again to confirm"
