"""tpu-mlir's fused top graph, its tensor names, and its calibration table read and written the way it applies it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.errors import CalibrationError, TableError
from harness.model.session import make_session
from harness.quant import build_plan, get_profile, placement_for
from harness.quant.calibrate import CalibrationRange
from harness.quant.plan_tables import ranges_to_tpu_table, tpu_table_to_ranges
from harness.quant.tables import TpuCalibrationRow, TpuCalibrationTable, read_tpu_calibration_table, write_tpu_calibration_table
from harness.quant.tpu_mlir import TopGraph, read_lowered_graph


def fused_model(*, second_reader: bool = False) -> onnx.ModelProto:
    """x -> conv1(3x3) -> Clip(0,6) r1 -> conv2(1x1) c2 -> conv3(1x1) -> Relu r3 -> Add(r3, r1) s -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(3)
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)), "b1": rng.standard_normal(4), "w2": rng.standard_normal((6, 4, 1, 1)),
             "b2": rng.standard_normal(6), "w3": rng.standard_normal((4, 6, 1, 1)), "b3": rng.standard_normal(4),
             "wf": rng.standard_normal((3, 4)), "bf": rng.standard_normal(3), "lo": 0.0, "hi": 6.0}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Add", ["r3", "r1"], ["s"], name="add"),
             helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _rows(names, th=1.0, lo=-1.0):
    return TpuCalibrationTable(rows={n: TpuCalibrationRow(threshold=th, min=lo, max=th) for n in names})


def test_top_graph_fuses_relus_merges_1x1_convs_and_names_tensors_like_tpu_mlir():
    top = TopGraph(fused_model())
    assert {k: v.name for k, v in top.fused_relu.items()} == {"c1": "clip1", "c3": "relu3"}
    assert list(top.merged) == ["c3"] and top.merged_away == {"c2"}
    assert top.tensors == ["x", "r1", "r3", "s", "g", "f", "y"]
    assert list(top.names) == ["x", "r1_Clip", "r3_Relu", "s_Add", "g_GlobalAveragePool", "f_Flatten", "y_Gemm"]
    # a suffix names the tensor only when it is the producer's op type
    assert top.onnx_tensor("c1_Conv") == "c1" and top.onnx_tensor("c1_Relu") is None and top.onnx_tensor("nope") is None
    # a 1x1 Conv read by something else too (here: a graph output) is not merged
    assert TopGraph(fused_model(second_reader=True)).merged == {}


def test_merged_weights_compute_the_two_convolutions():
    proto = fused_model()
    top = TopGraph(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w, b = top.merged["c3"].merged_weights(inits)
    r1 = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    sub = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]), helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"]),
         helper.make_node("Conv", ["r1", "wm", "bm"], ["m"])], "m",
        [helper.make_tensor_value_info("r1", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c3", "m")],
        [numpy_helper.from_array(inits[k], k) for k in ("w2", "b2", "w3", "b3")]
        + [numpy_helper.from_array(w, "wm"), numpy_helper.from_array(b, "bm")]),
        opset_imports=[helper.make_opsetid("", 13)])
    sequential, merged = make_session(sub.SerializeToString(), threads=1).run(["c3", "m"], {"r1": r1})
    np.testing.assert_allclose(merged, sequential, rtol=1e-5, atol=1e-5)


def test_table_with_tpu_mlir_names_reads_onto_onnx_tensors_and_serves_the_fused_conv(tmp_path):
    proto = fused_model()
    table = _rows(["x", "r1_Clip", "r3_Relu", "s_Add", "g_GlobalAveragePool", "f_Flatten", "y_Gemm"])
    ranges = tpu_table_to_ranges(table, proto)
    assert set(ranges) == {"x", "r1", "r3", "s", "g", "f", "y", "c1", "c3"}
    assert ranges["c1"] is ranges["r1"] and ranges["c3"] is ranges["r3"]  # the fused op has one output
    plan = build_plan(proto, get_profile("bm1684-int8"), ranges)
    assert {t for t, _ in plan.activations} == {"x", "r1", "r3", "s", "g", "f", "y"}
    # without the model, names stay as written: that is what made `[quant] table =` fail on tpu-mlir's own table
    with pytest.raises(CalibrationError, match="Got no range for 6 tensor"):
        build_plan(proto, get_profile("bm1684-int8"), tpu_table_to_ranges(table))
    # a profile quantising every ONNX tensor needs the merged-away middle tensor, which no tpu-mlir table has
    with pytest.raises(CalibrationError, match=r"\['c2'\]"):
        build_plan(proto, get_profile("bm1684-int8", placement="all_tensors", lowering="none"), ranges)


def test_written_table_uses_tpu_mlir_names_and_reads_back(tmp_path):
    proto = fused_model()
    profile = get_profile("bm1684-int8")
    sites = placement_for(proto, profile).tensors_to_calibrate()
    ranges = {t: CalibrationRange(method="kl", lo=-1.0 - i, hi=1.0 + i, threshold=1.0 + i, observed_min=-1.0 - i,
                                  observed_max=1.5 + i) for i, t in enumerate(sites)}
    path = write_tpu_calibration_table(ranges_to_tpu_table(ranges, proto=proto), tmp_path / "m.cali")
    table = read_tpu_calibration_table(path)
    assert list(table.rows) == ["x", "r1_Clip", "r3_Relu", "s_Add", "g_GlobalAveragePool", "f_Flatten", "y_Gemm"]
    back = tpu_table_to_ranges(table, proto)
    assert all(back[t].threshold == ranges[t].threshold and back[t].observed_max == ranges[t].observed_max for t in sites)


def test_read_lowered_graph(tmp_path):
    text = """#loc = loc(unknown)
module @m {
  func.func @main(%arg0: tensor<1x4xf32>) -> tensor<1x4xf32> {
    %5 = "tpu.Conv2D"(%2, %3, %4) {do_relu = true, quant_mode = #tpu<rq_mode OnlyShift>, relu_limit = -1.000000e+00 : f64, rshift = [7]} : (tensor<1x3x8x8x!quant.uniform<i8:f32, 0.02>>, tensor<4x3x3x3xi8>, tensor<4xi16>) -> tensor<1x4x8x8x!quant.uniform<u8:f32, 0.0125>> loc(#loc5)
    %9 = "tpu.Pool2D"(%8) {multiplier = 167 : si32, rshift = 13 : si32} : (tensor<1x4x7x7x!quant.uniform<u8:f32, 0.1>>) -> tensor<1x4x1x1x!quant.uniform<u8:f32, 0.1>> loc(#loc9)
  }
}
#loc5 = loc("r1_Clip")
#loc9 = loc("g_GlobalAveragePool")
"""
    path = tmp_path / "m_tpu.mlir"
    path.write_text(text)
    ops = read_lowered_graph(path)
    assert set(ops) == {"r1_Clip", "g_GlobalAveragePool"}
    conv = ops["r1_Clip"]
    assert (conv.op, conv.storage, conv.scale, conv.ints, conv.flag("do_relu")) == ("Conv2D", "u8", 0.0125, {"rshift": [7]}, "true")
    assert ops["g_GlobalAveragePool"].ints == {"rshift": [13], "multiplier": [167]}
    (tmp_path / "top.mlir").write_text('%1 = "top.Conv"(%0) : (tensor<1xf32>) -> tensor<1xf32> loc(#loc1)\n#loc1 = loc("a")\n')
    with pytest.raises(TableError, match="no tpu"):
        read_lowered_graph(tmp_path / "top.mlir")
