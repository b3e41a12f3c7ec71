"""tpu-mlir's range propagation (harness.quant.range_rules) on small hand-built graphs, and its effect
on the bm1684-int8 plan: shared tensors get the owner's scale, the table keeps every tensor's own range."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.errors import ConfigError
from harness.quant import get_profile
from harness.quant.calibrate import CalibrationRange
from harness.quant.calibration import build_plan, placement_for
from harness.quant.range_rules import range_owners


def _model(nodes: list[onnx.NodeProto], outputs: list[str], inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
               "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32)}
    weights.update(inits or {})
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _all(proto: onnx.ModelProto) -> set[str]:
    return {o for n in proto.graph.node for o in n.output} | {"x"}


def test_transpose_and_reshape_take_their_input_range():
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    proto = _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                    helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
                    helper.make_node("Reshape", ["t", "shape"], ["r"])], ["r"])
    proto.graph.initializer.append(shape)
    assert range_owners(proto, "tpu-mlir", _all(proto)) == {"t": "c", "r": "c"}
    assert range_owners(proto, "none", _all(proto)) == {}


def test_relu_input_read_once_takes_the_relu_output_range():
    """Backward first (conv output := relu output), then forward changes nothing: both use the Relu's."""
    proto = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                    helper.make_node("Conv", ["r", "w2"], ["y"])], ["y"])
    assert range_owners(proto, "tpu-mlir", _all(proto)) == {"c": "r"}


def test_relu_input_read_twice_keeps_its_range_and_the_output_follows():
    proto = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                    helper.make_node("Add", ["c", "r"], ["y"])], ["y"])
    assert range_owners(proto, "tpu-mlir", _all(proto)) == {"r": "c"}


@pytest.mark.parametrize(("low", "is_relu"), [(0.0, True), (-1.0, False)])
def test_clip_from_zero_is_a_relu_and_other_clips_are_not(low, is_relu):
    proto = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
                    helper.make_node("Conv", ["r", "w2"], ["y"])], ["y"],
                   inits={"lo": np.array(low, np.float32), "hi": np.array(6.0, np.float32)})
    assert range_owners(proto, "tpu-mlir", _all(proto)) == ({"c": "r"} if is_relu else {})


def test_concat_inputs_take_the_output_range_unless_they_already_agree():
    proto = _model([helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Conv", ["x", "w2"], ["b"]),
                    helper.make_node("Concat", ["a", "b"], ["y"], axis=1)], ["y"])
    assert range_owners(proto, "tpu-mlir", _all(proto)) == {"a": "y", "b": "y"}
    shared = _model([helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Transpose", ["a"], ["t1"]),
                     helper.make_node("Transpose", ["a"], ["t2"]), helper.make_node("Concat", ["t1", "t2"], ["y"], axis=1)],
                    ["y"])
    assert range_owners(shared, "tpu-mlir", _all(shared)) == {"t1": "a", "t2": "a", "y": "a"}


def test_rules_never_route_through_an_uncalibrated_tensor():
    proto = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Transpose", ["c"], ["t"])], ["t"])
    assert range_owners(proto, "tpu-mlir", {"x", "t"}) == {}


def test_bm1684_plan_uses_owner_scales_and_profile_validates_rules():
    proto = _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                    helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1])], ["t"])
    profile = get_profile("bm1684-int8")
    assert profile.range_rules == "tpu-mlir"
    tensors = placement_for(proto, profile).tensors_to_calibrate()
    assert set(tensors) == {"x", "c", "t"}  # every tensor still calibrated: the .cali keeps its row
    ranges = {t: CalibrationRange(method="kl", lo=-th, hi=th, threshold=th, observed_min=-th, observed_max=th)
              for t, th in zip(tensors, (1.0, 2.0, 0.5))}
    plan = build_plan(proto, profile, ranges)
    scale = {t: float(np.asarray(q.scale)) for (t, _), q in plan.activations.items()}
    assert scale["t"] == scale["c"] != scale["x"]
    own = build_plan(proto, profile.with_overrides(range_rules="none"), ranges)
    assert {t: float(np.asarray(q.scale)) for (t, _), q in own.activations.items()}["t"] != scale["c"]
    with pytest.raises(ConfigError, match="range_rules"):
        profile.with_overrides(range_rules="tensorrt")


def test_average_pool_shares_its_input_range_on_bm1684_only():
    proto = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
                    helper.make_node("Flatten", ["g"], ["f"])], ["f"])
    assert range_owners(proto, "tpu-mlir", _all(proto)) == {"g": "c", "f": "c"}
    # tpu-mlir's BM1684X MobileNetV2 graph requantises the pooled tensor to its own scale
    assert range_owners(proto, "tpu-mlir-bm1684x", _all(proto)) == {"f": "g"}
    assert get_profile("bm1684x-int8").range_rules == "tpu-mlir-bm1684x"
