"""QDQ writer: every scheme it writes computes what the numpy reference quantiser computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.data import PreprocessSpec, preprocess, read_image
from harness.model import TapRunner, load_model, make_session
from harness.model.load import Model
from harness.quant.calibrate import make_calibrator
from harness.quant.fold import fold_batchnorm
from harness.quant.plan import QuantPlan, TensorQuant
from harness.quant.scheme import QuantScheme, fake_quant, quant_params, weight_ranges
from harness.quant.simulate import compare_modes, write_qdq_model

from model_factory import conv_relu_model


def _model(proto: onnx.ModelProto) -> Model:
    return Model(path=Path("<test>"), proto=proto, sha256="", original_opset=13, original_ir_version=proto.ir_version)


def _tq(scheme: QuantScheme, lo, hi) -> TensorQuant:
    scale, zp = quant_params(scheme, lo, hi)
    return TensorQuant(scheme, scale, zp)


def _folded() -> onnx.ModelProto:
    return fold_batchnorm(conv_relu_model())[0]


def _run_dq(proto: onnx.ModelProto, plan: QuantPlan, x: np.ndarray, *, exact_rounding: bool = True) -> dict[str, np.ndarray]:
    qdq = write_qdq_model(proto, plan, exact_rounding=exact_rounding)
    onnx.checker.check_model(qdq.proto)
    return TapRunner(_model(qdq.proto), optimization="disabled").run(x), qdq


SCHEMES = {
    "int8_sym_even": QuantScheme(),
    "uint8_asym": QuantScheme(symmetric=False, signed=False, narrow_range=False),
    "int8_asym": QuantScheme(symmetric=False, narrow_range=False),
    "int8_sym_away": QuantScheme(rounding="half_away"),
    "int16_sym": QuantScheme(bits=16),
    "log2_8": QuantScheme(domain="log2"),
    "log2_16": QuantScheme(domain="log2", bits=16),
}


@pytest.mark.parametrize("key", sorted(SCHEMES))
def test_activation_matches_numpy_reference(key: str) -> None:
    scheme = SCHEMES[key]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32) * 2
    # Power-of-two steps (1/32 here, 1/8192 for 16-bit) make x/s exact in float32 and float64 alike,
    # so the values put on rounding ties below are ties for onnxruntime and numpy both.
    top = 127 / 32 if scheme.bits == 8 else 32767 / 8192
    lo, hi = (-top, top) if scheme.symmetric else (-4.0, 127 / 32)
    tq = _tq(scheme, lo, hi)
    if scheme.domain == "uniform":
        assert np.log2(float(np.asarray(tq.scale))).is_integer()
        x.ravel()[:40] = (np.arange(40, dtype=np.float32) - 20 + 0.5) * np.asarray(tq.scale, np.float32)
    out, qdq = _run_dq(_folded(), QuantPlan(activations={("input", "*"): tq}), x)
    got = out[qdq.dequantized_tensors["input"]]
    want = fake_quant(x, scheme, tq.scale, tq.zero_point)
    if scheme.domain == "log2":
        # float32 log in onnxruntime vs float64 in numpy: a value on a level boundary may land one
        # level away; at most one level, and on almost no values.
        ratio = np.abs(got[want != 0] / want[want != 0])
        assert np.all(ratio <= 2 ** (1 / scheme.levels_per_octave) * (1 + 1e-6))
        assert np.mean(got != want) < 0.01
        assert np.array_equal(got == 0, want == 0)
    else:
        np.testing.assert_array_equal(got, want)


def test_half_away_written_as_qdq_when_not_exact() -> None:
    scheme = QuantScheme(rounding="half_away")
    tq = _tq(scheme, -1.0, 1.0)
    qdq = write_qdq_model(_folded(), QuantPlan(activations={("input", "*"): tq}), exact_rounding=False)
    assert "input" in qdq.code_tensors  # Q/DQ (fusable), ties to even
    exact = write_qdq_model(_folded(), QuantPlan(activations={("input", "*"): tq}), exact_rounding=True)
    assert "input" not in exact.code_tensors


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_weights_and_bias(granularity: str) -> None:
    proto = _folded()
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    w_scheme = QuantScheme(granularity=granularity, axis=0)
    w_tq = _tq(w_scheme, *weight_ranges(inits[conv.input[1]], w_scheme))
    x_tq = _tq(QuantScheme(symmetric=False, signed=False, narrow_range=False), -3.0, 3.0)
    plan = QuantPlan(weights={conv.input[1]: w_tq}, activations={("input", "conv1"): x_tq}, quantize_bias=True)
    qdq = write_qdq_model(proto, plan)
    onnx.checker.check_model(qdq.proto)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    # Reference: the same convolution on numpy-fake-quantised input and weight, int32-rounded bias.
    w_fq = fake_quant(inits[conv.input[1]], w_scheme, w_tq.scale, w_tq.zero_point)
    x_fq = fake_quant(x, x_tq.scheme, x_tq.scale, x_tq.zero_point)
    b_scale = np.asarray(x_tq.scale, np.float32) * np.asarray(w_tq.scale, np.float32)
    b_fq = (np.rint(inits[conv.input[2]] / b_scale) * b_scale).astype(np.float32)
    ref_proto = onnx.ModelProto()
    ref_proto.CopyFrom(proto)
    for t in ref_proto.graph.initializer:
        if t.name in (conv.input[1], conv.input[2]):
            t.CopyFrom(numpy_helper.from_array(w_fq if t.name == conv.input[1] else np.broadcast_to(b_fq, inits[t.name].shape).astype(np.float32), t.name))
    want = make_session(ref_proto.SerializeToString(), optimization="disabled").run(None, {"input": x_fq})[0]
    got = make_session(qdq.proto.SerializeToString(), optimization="disabled").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_edge_site_quantises_only_that_consumer() -> None:
    tq = _tq(QuantScheme(), -1.0, 1.0)
    qdq = write_qdq_model(_folded(), QuantPlan(activations={("relu_out", "pool"): tq}))
    pool = next(n for n in qdq.proto.graph.node if n.name == "pool")
    assert pool.input[0] == "relu_out__pool__dq"
    assert "relu_out" not in qdq.dequantized_tensors  # an edge site, not the tensor for everyone


@pytest.mark.realmodel
def test_mobilenet_v2_modes_agree_within_one_step(realmodels_dir: Path) -> None:
    root = realmodels_dir / "mobilenet_v2"
    spec = PreprocessSpec.from_dict({"size": [224, 224], "resize": "short_side", "short_side": 256, "channel_order": "rgb",
                                     "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]})
    images = [preprocess(read_image(p), spec)[0][None] for p in sorted((root / "images").iterdir())]
    model = load_model(root / "mobilenet_v2.onnx")
    folded = fold_batchnorm(model.proto)[0]
    sites = [n.input[0] for n in folded.graph.node if n.op_type in ("Conv", "Gemm")]
    runner = TapRunner(_model(folded), taps=[s for s in sites if s != "input"])
    cals = {s: make_calibrator("minmax") for s in dict.fromkeys(sites)}
    for x in images:
        values = runner.run(x) | {"input": x}
        for name, cal in cals.items():
            cal.partial_fit(values[name])
    act = QuantScheme(symmetric=False, signed=False, narrow_range=False)
    inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    w_scheme = QuantScheme(granularity="per_channel", axis=0)
    weights = {n.input[1]: _tq(w_scheme, *weight_ranges(inits[n.input[1]], w_scheme)) for n in folded.graph.node if n.op_type in ("Conv", "Gemm")}
    activations = {(s, "*"): _tq(act, cals[s].compute().lo, cals[s].compute().hi) for s in cals}
    qdq = write_qdq_model(folded, QuantPlan(weights=weights, activations=activations, quantize_bias=True))
    report = compare_modes(qdq, images[:2])
    assert len(report) == len(cals)
    worst = max(report, key=lambda r: r.local_max_steps)
    assert worst.local_max_steps <= 1, worst
    # End to end the one-step differences propagate; the report must show that too.
    assert max(r.accumulated_max_steps for r in report) >= worst.local_max_steps
