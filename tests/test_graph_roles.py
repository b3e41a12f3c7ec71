"""Only activations are quantised: shape, scale, index and axis inputs never get Q/DQ, in any profile.

Each graph is built here the way exporters write it: a Resize whose scales are an Identity of a
constant (the RetinaFace export that KL calibrated to [1.0, 1.0015], so the Resize stopped upsampling),
Shape -> Gather -> Cast -> Mul -> Cast -> Unsqueeze -> Concat -> Reshape (a dynamic flatten), a Slice with
computed starts, and a Gather with int64 indices cast from a float constant.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.model import make_session
from harness.model.graph_roles import non_activations
from harness.quant import PROFILES, calibrate_activations, quantize_model
from harness.quant.calibration import placement_for
from harness.quant.simulate import mode_session

_I64 = TensorProto.INT64


def _finish(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], output: str, name: str,
            shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _stem(rng: np.random.Generator) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """input -> Conv(4) -> Relu: ``a`` [1, 4, 8, 8]."""
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b1": rng.standard_normal(4).astype(np.float32)}
    return [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["a"], name="relu1")], inits


def resize_identity_scales() -> onnx.ModelProto:
    """a -> stride-2 Conv -> Resize(scales = Identity([1, 1, 2, 2])) -> Add(a): the upsampling must stay x2."""
    rng = np.random.default_rng(0)
    nodes, inits = _stem(rng)
    inits |= {"w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "scales_c": np.array([1, 1, 2, 2], np.float32)}
    nodes += [helper.make_node("Conv", ["a", "w2"], ["b"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
              helper.make_node("Identity", ["scales_c"], ["scales"], name="scales_id"),
              helper.make_node("Resize", ["b", "", "scales"], ["up"], name="up", mode="nearest"),
              helper.make_node("Add", ["a", "up"], ["out"], name="add")]
    return _finish(nodes, inits, "out", "resize", [1, 4, 8, 8])


def reshape_from_shape_chain() -> onnx.ModelProto:
    """a -> Reshape(a, Concat(Unsqueeze(Cast(Mul(Cast(Gather(Shape(a), 0)), 1.0))), [-1])) -> MatMul."""
    rng = np.random.default_rng(1)
    nodes, inits = _stem(rng)
    inits |= {"i0": np.array(0, np.int64), "one": np.array(1.0, np.float32), "ax0": np.array([0], np.int64),
              "minus1": np.array([-1], np.int64), "fc_w": rng.standard_normal((256, 5)).astype(np.float32)}
    nodes += [helper.make_node("Shape", ["a"], ["a_shape"], name="shape"),
              helper.make_node("Gather", ["a_shape", "i0"], ["n"], name="gather_n", axis=0),
              helper.make_node("Cast", ["n"], ["n_f"], name="cast_f", to=TensorProto.FLOAT),
              helper.make_node("Mul", ["n_f", "one"], ["n_f1"], name="mul_n"),
              helper.make_node("Cast", ["n_f1"], ["n_i"], name="cast_i", to=_I64),
              helper.make_node("Unsqueeze", ["n_i", "ax0"], ["n_1d"], name="unsq"),
              helper.make_node("Concat", ["n_1d", "minus1"], ["new_shape"], name="concat_shape", axis=0),
              helper.make_node("Reshape", ["a", "new_shape"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "fc_w"], ["out"], name="fc")]
    return _finish(nodes, inits, "out", "reshape_chain", [1, 5])


def slice_computed_starts() -> onnx.ModelProto:
    """a -> Slice(a, starts = Cast(Floor(Cast(Gather(Shape(a), 2)) / 2)), axis 2) -> Conv: keeps rows 4..7."""
    rng = np.random.default_rng(2)
    nodes, inits = _stem(rng)
    inits |= {"i2": np.array([2], np.int64), "two": np.array(2.0, np.float32), "ends": np.array([8], np.int64),
              "axes": np.array([2], np.int64), "w3": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    nodes += [helper.make_node("Shape", ["a"], ["a_shape"], name="shape"),
              helper.make_node("Gather", ["a_shape", "i2"], ["h"], name="gather_h", axis=0),
              helper.make_node("Cast", ["h"], ["h_f"], name="cast_hf", to=TensorProto.FLOAT),
              helper.make_node("Div", ["h_f", "two"], ["half_f"], name="half"),
              helper.make_node("Floor", ["half_f"], ["half_floor"], name="floor"),
              helper.make_node("Cast", ["half_floor"], ["starts"], name="cast_starts", to=_I64),
              helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["lower"], name="slice"),
              helper.make_node("Conv", ["lower", "w3"], ["out"], name="conv3")]
    return _finish(nodes, inits, "out", "slice", [1, 2, 4, 8])


def gather_int64_indices() -> onnx.ModelProto:
    """a -> Gather(a, Cast(Identity(float [0, 2]), int64), axis 1) -> Conv: channels 0 and 2."""
    rng = np.random.default_rng(3)
    nodes, inits = _stem(rng)
    inits |= {"idx_c": np.array([0.0, 2.0], np.float32), "w3": rng.standard_normal((3, 2, 1, 1)).astype(np.float32)}
    nodes += [helper.make_node("Identity", ["idx_c"], ["idx_f"], name="idx_id"),
              helper.make_node("Cast", ["idx_f"], ["idx"], name="idx_cast", to=_I64),
              helper.make_node("Gather", ["a", "idx"], ["picked"], name="pick", axis=1),
              helper.make_node("Conv", ["picked", "w3"], ["out"], name="conv3")]
    return _finish(nodes, inits, "out", "gather", [1, 3, 8, 8])


#: builder -> (float tensors that must never be quantised, data tensors next to them that all_tensors must still
#: quantise: proof the analysis does not simply drop everything near a parameter)
GRAPHS = {
    "resize_identity_scales": (resize_identity_scales, {"scales"}, {"b", "up"}),
    "reshape_from_shape_chain": (reshape_from_shape_chain, {"n_f", "n_f1"}, {"a", "flat"}),
    "slice_computed_starts": (slice_computed_starts, {"h_f", "half_f", "half_floor"}, {"a", "lower"}),
    "gather_int64_indices": (gather_int64_indices, {"idx_f"}, {"a", "picked"}),
}


def _batches() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_parameter_tensors_are_not_activations(graph: str) -> None:
    build, parameters, data = GRAPHS[graph]
    roles = non_activations(build())
    assert parameters <= set(roles), {p: roles.get(p) for p in parameters}
    assert not data & set(roles)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_no_profile_quantises_a_parameter_and_the_qdq_model_keeps_its_shapes(graph: str, profile: str) -> None:
    build, parameters, data = GRAPHS[graph]
    proto = build()
    prof = PROFILES[profile]
    sites = {t for t, _ in placement_for(proto, prof).sites}
    assert not sites & parameters
    if prof.placement == "all_tensors":
        assert data <= sites
    batches = _batches()
    qm = quantize_model(proto, prof, lambda: iter(batches))
    assert not set(qm.ranges) & parameters
    added = [n for n in qm.qdq.proto.graph.node if n.name.startswith("qh__")]
    readers = {(n.op_type, i) for n in added for i in n.input if i in parameters}
    assert not readers, f"Q/DQ or fake-quant nodes read parameter tensors: {sorted(readers)}"
    fp32 = make_session(proto.SerializeToString(), threads=1)
    want = fp32.run(None, {"input": batches[0]})[0]
    for mode in ("simulate", "int8-kernels"):
        got = mode_session(qm.qdq, mode, threads=1).run(None, {"input": batches[0]})[0]
        assert got.shape == want.shape, mode
        assert np.all(np.isfinite(got))


def test_explicit_calibration_sites_skip_non_activations() -> None:
    proto = resize_identity_scales()
    batches = _batches()
    ranges = calibrate_activations(proto, ["a", "scales", ("b", "*")], lambda: iter(batches), method="kl")
    assert list(ranges) == ["a", "b"]


def _tiny(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return onnx.shape_inference.infer_shapes(model)


def test_a_value_computed_from_activations_only_for_a_parameter_is_not_an_activation() -> None:
    """TopK's k from the data (ReduceMax -> Cast): the float ReduceMax output only feeds a parameter."""
    model = _tiny([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                   helper.make_node("ReduceMax", ["r"], ["m"], name="rmax", keepdims=0, axes=[0, 1, 2]),
                   helper.make_node("Cast", ["m"], ["m_i"], name="cast", to=_I64),
                   helper.make_node("Unsqueeze", ["m_i", "ax"], ["k"], name="unsq"),
                   helper.make_node("TopK", ["r", "k"], ["top", "top_i"], name="topk")],
                  {"ax": np.array([0], np.int64)}, ["top"])
    roles = non_activations(model)
    assert roles["m"].startswith("parameter") and "Cast" in roles["m"]
    assert "r" not in roles and "top" not in roles  # r is also TopK's data; top is a graph output


def test_an_identity_of_a_constant_is_static_and_its_neighbours_are_data() -> None:
    """Add(x, Identity(c)): the Identity output is a constant operand, not a site; x, y and z all are."""
    model = _tiny([helper.make_node("Identity", ["c"], ["c_id"], name="cid"),
                   helper.make_node("Add", ["x", "c_id"], ["y"], name="add"),
                   helper.make_node("Relu", ["y"], ["z"], name="relu")],
                  {"c": np.ones((1, 4, 6), np.float32)}, ["z"])
    roles = non_activations(model)
    assert roles["c_id"].startswith("static")
    assert not {"x", "y", "z"} & set(roles)
    # (tflite-int8 quantises every tensor; bm1684-int8 now follows tpu-mlir, which fuses the Relu into the Add)
    sites = {t for t, _ in placement_for(model, PROFILES["tflite-int8"]).sites}
    assert sites == {"x", "y", "z"}

