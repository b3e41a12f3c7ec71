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


# --- the simulate mode's faster set-up must not change a bit -------------------------------------
def _relu_site_model(*, clip: bool) -> onnx.ModelProto:
    """input -> Relu (or Clip(min=0, max=6) with Constant bounds) -> r -> GlobalAveragePool -> output."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["input"], ["r"], name="act")]
    if clip:
        nodes = [helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(0.0))),
                 helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.float32(6.0))),
                 helper.make_node("Clip", ["input", "lo", "hi"], ["r"], name="act")]
    nodes.append(helper.make_node("GlobalAveragePool", ["r"], ["output"], name="pool"))
    graph = helper.make_graph(nodes, "relu_site", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


_FAKE_QUANT_SCHEMES = {"int8_sym_away": SCHEMES["int8_sym_away"], "int16_sym": SCHEMES["int16_sym"],
                       "uint8_asym_away": QuantScheme(symmetric=False, signed=False, narrow_range=False,
                                                      rounding="half_away")}


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("key", sorted(_FAKE_QUANT_SCHEMES))
def test_nonnegative_site_is_bit_identical_to_the_general_subgraph(monkeypatch, key: str, clip: bool) -> None:
    """A Relu/Clip(min >= 0) output gets a shorter fake-quant subgraph; it computes the same bits
    as the general one, on ties, zeros, -0.0 and values past the clip."""
    import harness.quant.simulate as simulate

    scheme = _FAKE_QUANT_SCHEMES[key]
    top = 127 / 32 if scheme.bits == 8 else 32767 / 8192  # power-of-two steps, as above
    tq = _tq(scheme, *((-top, top) if scheme.symmetric else (-4.0, 127 / 32)))
    step = np.asarray(tq.scale, np.float32).reshape(())
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 2, 8, 8)) * 3).astype(np.float32)
    x.ravel()[:40] = (np.arange(40, dtype=np.float32) - 10 + 0.5) * step  # ties, negative and positive
    x.ravel()[40:44] = [0.0, -0.0, 1e-30, -1e-30]
    x.ravel()[44:48] = [500.0, 6.0, 5.9999995, 1e6]
    plan = QuantPlan(activations={("r", "*"): tq})
    fast = write_qdq_model(_relu_site_model(clip=clip), plan)
    monkeypatch.setattr(simulate, "_nonnegative_tensors", lambda graph: set())
    general = write_qdq_model(_relu_site_model(clip=clip), plan)
    if scheme.rounding == "half_away" and scheme.bits == 8:
        assert "Sign" not in {n.op_type for n in fast.proto.graph.node}  # the short form was written
    a = TapRunner(_model(fast.proto), optimization="disabled").run(x)[fast.dequantized_tensors["r"]]
    b = TapRunner(_model(general.proto), optimization="disabled").run(x)[general.dequantized_tensors["r"]]
    assert a.tobytes() == b.tobytes()
    if np.log2(float(step)).is_integer():  # x / s exact in float32 and float64 alike: numpy agrees too
        np.testing.assert_array_equal(a, fake_quant(np.clip(x, 0, 6 if clip else None), scheme, tq.scale, tq.zero_point))


def test_nonnegative_tensors_are_relu_and_clip_from_zero() -> None:
    from onnx import helper

    from harness.quant.simulate import _nonnegative_tensors

    graph = _relu_site_model(clip=True).graph
    graph.node.extend([helper.make_node("Clip", ["input", "", "hi"], ["no_lower_bound"]),
                       helper.make_node("Clip", ["input", "hi", ""], ["from_six"]),
                       helper.make_node("Relu", ["input"], ["relu"]),
                       helper.make_node("Neg", ["relu"], ["neg"])])
    assert _nonnegative_tensors(graph) == {"r", "from_six", "relu"}


def _weights_plan(proto: onnx.ModelProto) -> QuantPlan:
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w_scheme = QuantScheme(granularity="per_channel", axis=0)
    weights = {n.input[1]: _tq(w_scheme, *weight_ranges(inits[n.input[1]], w_scheme))
               for n in proto.graph.node if n.op_type in ("Conv", "Gemm")}
    away = QuantScheme(rounding="half_away")
    activations = {(name, "*"): _tq(away, -3.0, 3.0) for name in ("input", "relu_out", "flat")}
    return QuantPlan(weights=weights, activations=activations, quantize_bias=True)


def test_simulation_proto_folds_conv_weights_bit_identically() -> None:
    from harness.quant.simulate import mode_runner, mode_session, simulation_proto

    proto = _folded()
    qdq = write_qdq_model(proto, _weights_plan(proto))
    folded = simulation_proto(qdq.proto)
    onnx.checker.check_model(folded)
    dq_readers = {c.op_type for n in folded.graph.node if n.op_type == "DequantizeLinear"
                  for c in folded.graph.node if n.output[0] in c.input}
    assert "Conv" not in dq_readers and "Gemm" in dq_readers  # Gemm prepacks a constant weight: kept
    reference = make_session(qdq.proto.SerializeToString(), optimization="disabled")
    session = mode_session(qdq, "simulate")
    runner = mode_runner(qdq, "simulate", taps=sorted(qdq.dequantized_tensors.values()))
    want_runner = TapRunner(_model(qdq.proto), taps=sorted(qdq.dequantized_tensors.values()), optimization="disabled")
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
        assert session.run(None, {"input": x})[0].tobytes() == reference.run(None, {"input": x})[0].tobytes()
        got, want = runner.run(x), want_runner.run(x)
        assert all(got[k].tobytes() == want[k].tobytes() for k in want)


@pytest.mark.parametrize("op, x_shape, w_shape, attrs", [
    ("Conv", (1, 16, 12, 12), (32, 16, 1, 1), {}),
    ("Conv", (1, 16, 12, 12), (32, 16, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("Conv", (1, 16, 12, 12), (16, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 16}),
    ("ConvTranspose", (1, 16, 6, 6), (16, 8, 2, 2), {"strides": [2, 2]}),
])
def test_conv_reads_a_constant_weight_like_a_computed_one(op: str, x_shape, w_shape, attrs) -> None:
    """Why simulation_proto may fold Conv/ConvTranspose weights: with optimisations off, onnxruntime
    computes the same bits whether the weight is an initializer or a tensor computed at run time
    (Gemm and MatMul prepack a constant weight and round differently, so theirs are not folded)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    outputs = []
    for constant in (True, False):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
        if not constant:
            inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w_shape)))
        graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"], **attrs)], "g", inputs,
                                  [helper.make_empty_tensor_value_info("y")],
                                  [numpy_helper.from_array(w, "w")] if constant else [])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = make_session(model.SerializeToString(), threads=2, optimization="disabled")
        outputs.append(session.run(None, {"x": x} if constant else {"x": x, "w": w})[0])
    assert outputs[0].tobytes() == outputs[1].tobytes()
