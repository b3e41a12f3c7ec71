"""Plans <-> ncnn / tpu-mlir tables: exact round trips, and simulating a read table equals
simulating the plan it was written from."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.errors import ConfigError, TableError
from harness.model import load_model
from harness.quant import (
    build_plan,
    calibrate_activations,
    get_profile,
    ncnn_table_to_plan,
    plan_to_ncnn_table,
    qtable_float_layers,
    ranges_to_tpu_table,
    tpu_table_to_plan,
)
from harness.quant.plan_tables import ncnn_scale_for
from harness.quant.simulate import write_qdq_model
from harness.quant.tables import (
    NcnnTable,
    read_ncnn_table,
    read_tpu_calibration_table,
    write_ncnn_table,
    write_tpu_calibration_table,
)
from test_calibration_driver import batches, residual_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    proto = residual_model()
    w2 = next(t for t in proto.graph.initializer if t.name == "w2")
    arr = numpy_helper.to_array(w2).copy()
    arr[2] = 0.0  # a dead output channel
    w2.CopyFrom(numpy_helper.from_array(arr, "w2"))
    path = tmp_path_factory.mktemp("m") / "residual.onnx"
    onnx.save(proto, path)
    return load_model(path)


def _assert_same_plan(a, b):
    assert list(a.weights) == list(b.weights) and set(a.activations) == set(b.activations)
    for k in a.weights:
        assert a.weights[k].scheme == b.weights[k].scheme, k
        assert np.asarray(a.weights[k].scale).tobytes() == np.asarray(b.weights[k].scale).tobytes(), k
        assert np.array_equal(a.weights[k].zero_point, b.weights[k].zero_point)
    for k in a.activations:
        assert a.activations[k].scheme == b.activations[k].scheme, k
        assert np.asarray(a.activations[k].scale).tobytes() == np.asarray(b.activations[k].scale).tobytes(), k
    assert a.float_layers == b.float_layers and a.quantize_bias == b.quantize_bias


def test_ncnn_scale_inverse_is_exact_on_many_values():
    rng = np.random.default_rng(0)
    absmax = np.exp(rng.uniform(-12, 8, 20000)).astype(np.float32)
    onnx_scale = (1.0 / (127.0 / absmax.astype(np.float64)).astype(np.float32)).astype(np.float32)
    back = ncnn_scale_for(onnx_scale)
    assert np.all((1.0 / back.astype(np.float64)).astype(np.float32) == onnx_scale)


@pytest.mark.parametrize("float_layers", [(), ("conv2",)])
def test_plan_table_plan_round_trip_and_same_qdq_bytes(model, tmp_path, float_layers):
    profile = get_profile("ncnn-int8", float_layers=list(float_layers))
    ranges = calibrate_activations(model, profile, batches())
    plan = build_plan(model.proto, profile, ranges)
    table = plan_to_ncnn_table(model.proto, plan)
    path = write_ncnn_table(table, tmp_path / "m.table")
    read = read_ncnn_table(path)
    assert read == table
    back = ncnn_table_to_plan(model.proto, read, get_profile("ncnn-int8"))
    _assert_same_plan(plan, back)
    original = write_qdq_model(model.proto, plan).proto.SerializeToString()
    assert write_qdq_model(model.proto, back).proto.SerializeToString() == original


def test_table_lines(model, tmp_path):
    profile = get_profile("ncnn-int8", float_layers=["fc"])
    plan = build_plan(model.proto, profile, calibrate_activations(model, profile, batches()))
    text = write_ncnn_table(plan_to_ncnn_table(model.proto, plan), tmp_path / "t.table").read_text()
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["conv1_param_0", "conv2_param_0", "conv1", "conv2", "#fc"]
    conv2 = lines[1].split()[1:]
    assert len(conv2) == 4 and float(conv2[2]) == 0.0  # dead channel written as 0
    w1 = numpy_helper.to_array(next(t for t in model.proto.graph.initializer if t.name == "w1"))
    expected = 127.0 / np.abs(w1).reshape(4, -1).max(axis=1)
    np.testing.assert_allclose([float(v) for v in lines[0].split()[1:]], expected, rtol=1e-6)
    assert float(lines[2].split()[1]) == pytest.approx(127.0 / calibrate_activations(model, profile, batches())["x"].threshold, rel=1e-6)


def test_six_bit_only_for_3x3_stride1_and_only_when_asked(model):
    profile = get_profile("ncnn-int8")
    plan = build_plan(model.proto, profile, calibrate_activations(model, profile, batches()))
    eight = plan_to_ncnn_table(model.proto, plan)
    six = plan_to_ncnn_table(model.proto, plan, six_bit=True)
    np.testing.assert_allclose(six.weight_scales["conv1"], eight.weight_scales["conv1"] * 31 / 127, rtol=1e-5)
    np.testing.assert_array_equal(six.weight_scales["conv2"], eight.weight_scales["conv2"])  # 1x1 conv: 8-bit


def test_per_tensor_weights_written_per_channel_and_read_back(model):
    profile = get_profile("ncnn-int8", weight_granularity="per_tensor")
    plan = build_plan(model.proto, profile, calibrate_activations(model, profile, batches()))
    table = plan_to_ncnn_table(model.proto, plan)
    assert table.weight_scales["conv1"].size == 4 and len(set(table.weight_scales["conv1"].tolist())) == 1
    _assert_same_plan(plan, ncnn_table_to_plan(model.proto, table, profile))


def test_asymmetric_plan_cannot_become_an_ncnn_table(model):
    profile = get_profile("tflite-uint8")
    plan = build_plan(model.proto, profile, calibrate_activations(model, profile, batches()))
    with pytest.raises(ConfigError, match="ncnn"):
        plan_to_ncnn_table(model.proto, plan)


def test_table_for_another_model_is_refused(model):
    table = NcnnTable(weight_scales={"conv9": np.ones(4)}, activation_scales={"conv9": 1.0})
    with pytest.raises(TableError, match="conv9"):
        ncnn_table_to_plan(model.proto, table, get_profile("ncnn-int8"))


def test_hash_lines_read_as_float_layers(model, tmp_path):
    profile = get_profile("ncnn-int8")
    plan = build_plan(model.proto, profile, calibrate_activations(model, profile, batches()))
    text = write_ncnn_table(plan_to_ncnn_table(model.proto, plan), tmp_path / "a.table").read_text()
    edited = tmp_path / "b.table"
    edited.write_text(text.replace("conv2_param_0", "#conv2_param_0").replace("\nconv2 ", "\n#conv2 "))
    back = ncnn_table_to_plan(model.proto, read_ncnn_table(edited), profile)
    assert "conv2" in back.float_layers and "w2" not in back.weights and ("r1", "conv2") not in back.activations


def test_tpu_table_round_trip_and_qtable(model, tmp_path):
    profile = get_profile("bm1684-int8")
    ranges = calibrate_activations(model, profile, batches())
    plan = build_plan(model.proto, profile, ranges)
    path = write_tpu_calibration_table(ranges_to_tpu_table(ranges, comments=["quant-harness"]), tmp_path / "m.cali")
    table = read_tpu_calibration_table(path)
    _assert_same_plan(plan, tpu_table_to_plan(model.proto, table, profile))
    assert write_qdq_model(model.proto, tpu_table_to_plan(model.proto, table, profile)).proto.SerializeToString() == \
        write_qdq_model(model.proto, plan).proto.SerializeToString()
    # qtable rows name an op or its output tensor; non-INT8 modes keep the layer float
    assert qtable_float_layers(model.proto, {"c2": "F32", "fc": "BF16", "conv1": "INT8"}) == {"conv2", "fc"}
    with_q = tpu_table_to_plan(model.proto, table, profile, qtable={"c2": "F32"})
    assert "conv2" in with_q.float_layers and "w2" not in with_q.weights and ("c2", "*") not in with_q.activations
    with pytest.raises(TableError):
        qtable_float_layers(model.proto, {"nope": "F32"})


def _conv_zoo() -> onnx.ModelProto:
    """Four 3x3 stride-1 convolutions: plain, depthwise, grouped and dilated; only the plain one is an ncnn
    ``Convolution`` on the winograd path (the others are ConvolutionDepthWise or dilated)."""
    rng = np.random.default_rng(3)
    shapes = {"plain": (4, 4, 3, 3), "dw": (4, 1, 3, 3), "grouped": (4, 2, 3, 3), "dilated": (4, 4, 3, 3)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"w_{n}") for n, s in shapes.items()]
    attrs = {"plain": {}, "dw": {"group": 4}, "grouped": {"group": 2}, "dilated": {"dilations": [2, 2], "pads": [2, 2, 2, 2]}}
    nodes, x = [], "x"
    for name, extra in attrs.items():
        pads = extra.pop("pads", [1, 1, 1, 1])
        nodes.append(onnx.helper.make_node("Conv", [x, f"w_{name}"], [f"y_{name}"], name=name, pads=pads, **extra))
        x = f"y_{name}"
    graph = onnx.helper.make_graph(
        nodes, "zoo", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_six_bit_only_for_ncnn_convolutions_not_depthwise_grouped_or_dilated(tmp_path):
    path = tmp_path / "zoo.onnx"
    onnx.save(_conv_zoo(), path)
    zoo = load_model(path)
    profile = get_profile("ncnn-int8")
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(3)]
    plan = build_plan(zoo.proto, profile, calibrate_activations(zoo, profile, lambda: iter(data)))
    eight = plan_to_ncnn_table(zoo.proto, plan)
    six = plan_to_ncnn_table(zoo.proto, plan, six_bit=True)
    np.testing.assert_allclose(six.weight_scales["plain"], eight.weight_scales["plain"] * 31 / 127, rtol=1e-5)
    for name in ("dw", "grouped", "dilated"):
        np.testing.assert_array_equal(six.weight_scales[name], eight.weight_scales[name], err_msg=name)
