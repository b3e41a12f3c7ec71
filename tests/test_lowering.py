"""The Sophon lowering: its integer parameters, and the QDQ simulation of it against a numpy integer reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.quant import bm1684
from harness.quant import build_plan, get_profile, placement_for
from harness.quant.calibrate import CalibrationRange
from harness.quant.lowering import LoweredAdd, LoweredPool, LoweredWeighted
from harness.quant.simulate import mode_runner, write_qdq_model
from test_tpu_mlir import fused_model


@pytest.mark.parametrize("fmax, s_in, s_out", [(0.7, 0.02, 0.014), (3.0, 0.1, 0.05), (0.01, 0.02, 0.5), (1e-3, 1.0, 1e-4)])
def test_right_shift_is_the_largest_that_keeps_the_largest_weight_below_127(fmax, s_in, s_out):
    r = bm1684.right_shift_for(fmax, s_in, s_out)
    ratio = float(np.float32(fmax)) * s_in / s_out
    assert ratio * 2**r < 127 <= ratio * 2 ** (r + 1)


def test_bm1684_weights_share_one_power_of_two_scale_and_bias_overflow_lowers_the_shift():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * np.linspace(0.1, 2.0, 8, dtype=np.float32)[:, None, None, None]
    small = bm1684.bm1684_weighted(w, np.zeros(8, np.float32), 0.02, 0.05)
    r = int(small.requant.shift)
    assert np.abs(small.weight).max() < 127 and np.abs(small.weight).max() >= 63  # per layer: 63.5 .. 127 codes
    np.testing.assert_allclose(small.weight, np.round(w * np.float32(2.0**r * 0.02 / 0.05)), atol=0.5 + 1e-6)
    assert float(small.accumulator_scale) == pytest.approx(0.05 / 2**r)
    # a bias that saturates int16 on more than 3 % of the channels costs shifts until it fits
    bias = np.float32(1.5 * 32767 * 0.05 / 2**r) * (np.arange(8) > 3)  # 1.5x int16 at shift r, 0.75x at r - 1
    big = bm1684.bm1684_weighted(w, bias.astype(np.float32), 0.02, 0.05)
    assert int(big.requant.shift) == r - 1 and np.abs(big.bias).max() < 32767


def test_bm1684_add_and_pool_multipliers():
    add = bm1684.bm1684_add([0.036806587401574803, 0.035519070866141735], 0.051422137795275588)
    assert add.multiplier.tolist() == [92, 88] and add.shift.tolist() == [7, 7]  # tpu-mlir's MobileNetV2 features.3
    for k in range(1, 226):
        pool = bm1684.bm1684_avgpool(k)
        m, e = int(pool.multiplier), int(pool.shift)
        assert m <= 255 and round(2 ** (e + 1) / k) > 255 and abs(m / 2**e - 1 / k) <= 0.5 / 2**e
    assert bm1684.bm1684_avgpool(226) is None  # float on the chip


@pytest.mark.parametrize("scale", [6.13e-5, 0.71577, 0.024311, 1.7, 3e-9])
def test_scale_and_shift_is_the_nearest_representable_multiplier(scale):
    m, n = bm1684.scale_and_shift(scale, bits=32)
    f = float(np.float32(scale))
    assert abs(m) < 2**31 - 1
    best = min(abs(math.floor(f * 2.0**k + 0.5) / 2.0**k - f) for k in range(-32, 31) if abs(f * 2.0**k) < 2**31 - 1)
    assert abs(m / 2.0**n - f) == pytest.approx(best, abs=1e-12)
    m8, n8 = bm1684.scale_and_shift(scale, bits=8, positive=True)
    assert 0 <= n8 <= 30 and abs(m8) < 127


def _ranges(proto, profile):
    rng = np.random.default_rng(5)
    out = {}
    for t in placement_for(proto, profile).tensors_to_calibrate():
        th = float(rng.uniform(1.0, 4.0))
        lo = 0.0 if t in ("r1", "r3") else -th  # post-ReLU tensors are unsigned on the chip
        out[t] = CalibrationRange(method="table", lo=lo, hi=th, threshold=th, observed_min=lo, observed_max=th)
    return out


def _codes(x, scale):
    return np.round(np.asarray(x, np.float64) / float(np.asarray(scale)))


def _conv(x, w, b, pad):
    """Integer 2-D convolution, stride 1, float64 (exact for these sizes)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    h, wd = x.shape[2] + 2 * pad - k + 1, x.shape[3] + 2 * pad - k + 1
    out = np.zeros((1, w.shape[0], h, wd))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def _requant(acc, requant, shape=None):
    factor = requant.factor if shape is None else requant.factor.reshape(shape)
    return np.floor(acc * factor + 0.5)


@pytest.mark.parametrize("profile_name", ["bm1684-int8", "bm1684x-int8"])
def test_simulation_computes_the_lowered_integers_exactly(profile_name):
    proto = fused_model()
    profile = get_profile(profile_name)
    plan = build_plan(proto, profile, _ranges(proto, profile))
    assert sorted(plan.lowered) == ["add", "conv1", "conv3", "fc", "gap"]
    assert plan.lowered["conv1"].params.bias_bits == (16 if profile_name == "bm1684-int8" else 32)
    conv3 = plan.lowered["conv3"]
    assert isinstance(conv3, LoweredWeighted) and conv3.merged == "conv2" and conv3.input == "r1" and conv3.relu
    assert not {"w1", "w2", "w3", "wf"} & set(plan.weights)
    qdq = write_qdq_model(proto, plan)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    names = {t: qdq.dequantized_tensors[t] for t in ("x", "r1", "r3", "s", "g", "y")}
    got = mode_runner(qdq, "simulate", taps=[*names.values(), "c1"], threads=1).run(x)
    scale = {t: plan.activations[(t, "*")].scale for t in names}
    codes = {t: _codes(got[names[t]], scale[t]) for t in names}

    def clamp(v, t, relu=False):
        s = plan.activations[(t, "*")].scheme
        return np.clip(v, max(s.qmin, 0) if relu else s.qmin, s.qmax)

    per = (lambda op: [1, -1, 1, 1]) if profile_name == "bm1684x-int8" else (lambda op: None)
    c1 = plan.lowered["conv1"]
    acc1 = _conv(codes["x"], c1.params.weight, c1.params.bias, 1)
    np.testing.assert_array_equal(codes["r1"], clamp(_requant(acc1, c1.params.requant, per(c1)), "r1", relu=True))
    # the Conv's own output is the accumulator in real units (comparable with fp32's), not requantised
    acc_scale = np.asarray(c1.params.accumulator_scale, np.float64)
    np.testing.assert_allclose(got["c1"], acc1 * (acc_scale.reshape(1, -1, 1, 1) if acc_scale.size > 1 else acc_scale),
                               rtol=1e-6, atol=1e-6)
    expect_r3 = clamp(_requant(_conv(codes["r1"], conv3.params.weight, conv3.params.bias, 0), conv3.params.requant,
                               per(conv3)), "r3", relu=True)
    np.testing.assert_array_equal(codes["r3"], expect_r3)
    add = plan.lowered["add"]
    assert isinstance(add, LoweredAdd)
    terms = [np.floor(codes[t] * add.requant.factor[i] + 0.5) for i, t in enumerate(add.inputs)]
    np.testing.assert_array_equal(codes["s"], clamp(terms[0] + terms[1], "s"))
    gap = plan.lowered["gap"]
    assert isinstance(gap, LoweredPool) and gap.kernel == 64
    np.testing.assert_array_equal(codes["g"], clamp(_requant(codes["s"].sum(axis=(2, 3), keepdims=True), gap.requant), "g"))
    fc = plan.lowered["fc"]
    acc = codes["g"].reshape(1, -1) @ fc.params.weight.T.astype(np.float64) + fc.params.bias
    np.testing.assert_array_equal(codes["y"], clamp(_requant(acc, fc.params.requant, [1, -1] if per(fc) else None), "y"))


def test_without_the_lowering_the_plan_is_plain_fake_quant():
    proto = fused_model()
    profile = get_profile("bm1684-int8", lowering="none")
    plan = build_plan(proto, profile, _ranges(proto, profile))
    assert not plan.lowered and {"w1", "w2", "w3", "wf"} <= set(plan.weights)


def test_sessions_skip_the_float_branches_only_taps_need_and_compute_the_same():
    from harness.model.session import make_session
    from harness.quant.simulate import _mode_proto, mode_session

    proto = fused_model()
    plan = build_plan(proto, get_profile("bm1684-int8"), _ranges(proto, get_profile("bm1684-int8")))
    qdq = write_qdq_model(proto, plan)
    live = _mode_proto(qdq, "simulate")
    produced = {o for n in live.graph.node for o in n.output}
    assert not {"c1", "c2", "c3"} & produced  # the accumulators in real units and the merged-away 1x1 Conv
    assert {"c1", "c2"} <= {o for n in _mode_proto(qdq, "simulate", keep=["c1", "c2"]).graph.node for o in n.output}
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    everything = make_session(_mode_proto(qdq, "simulate", keep=None).SerializeToString(), threads=1,
                              optimization="disabled")
    np.testing.assert_array_equal(mode_session(qdq, "simulate", threads=1).run(["y"], {"x": x})[0],
                                  everything.run(["y"], {"x": x})[0])
    tapped = mode_runner(qdq, "simulate", taps=["c1"], threads=1).run(x)
    assert "c1" in tapped


def test_a_float_relu_keeps_its_fused_conv_float_as_a_tpu_mlir_qtable_row_does():
    from harness.quant.plan_tables import qtable_float_layers

    proto = fused_model()
    assert qtable_float_layers(proto, {"r3_Relu": "F32", "r1": "INT8"}) == {"relu3"}  # tpu-mlir's name of conv3+relu3
    profile = get_profile("bm1684-int8", float_layers=["relu3"])
    plan = build_plan(proto, profile, _ranges(proto, profile))
    assert "conv3" not in plan.lowered and not {"w1", "w2", "w3"} & set(plan.weights)  # w1: lowered conv1
