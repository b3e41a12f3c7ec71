"""Calibration driver: sites per placement (ORT's checked against quantize_static itself),
determinism, single/two passes, graph inputs as sites, sharding, plans."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.errors import CalibrationError
from harness.model import load_model
from harness.quant import (
    build_plan,
    calibrate_activations,
    get_profile,
    plan_to_ncnn_table,
    quantize_model,
    ranges_to_tpu_table,
)
from harness.quant.calibrate import make_calibrator
from harness.quant.calibration import activation_sites, placement_for, run_calibrators
from harness.quant.fold import fold_batchnorm
from harness.quant.tables import format_ncnn_table, format_tpu_calibration_table

from model_factory import conv_relu_model


def residual_model() -> onnx.ModelProto:
    """x -> conv1 -> relu -> conv2 -> add(relu) -> relu2 -> gap -> flatten -> fc -> y."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
             numpy_helper.from_array((0.3 * rng.standard_normal((4, 4, 1, 1))).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "wf"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "residual.onnx"
    onnx.save(residual_model(), path)
    return load_model(path)


def batches(n=6, seed=0):
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(n)]
    return lambda: iter(data)


def test_conv_inputs_sites_are_edges_into_weight_layers(residual):
    sites = activation_sites(residual.proto, get_profile("ncnn-int8"))
    assert sites == [("x", "conv1"), ("r1", "conv2"), ("f", "fc")]  # r1 stays float where `add` reads it


def _all_tensors(**overrides):
    """bm1684-int8 with a site on every tensor (its own tpu_mlir placement leaves out what tpu-mlir fuses)."""
    return get_profile("bm1684-int8", placement="all_tensors", lowering="none", **overrides)


def test_all_tensors_sites_include_the_model_input(residual):
    sites = activation_sites(residual.proto, _all_tensors())
    assert sites == [(t, "*") for t in ("x", "c1", "r1", "c2", "s", "r2", "g", "f", "y")]


def test_float_layers_per_placement(residual):
    ncnn = activation_sites(residual.proto, get_profile("ncnn-int8", float_layers=["conv2"]))
    assert ncnn == [("x", "conv1"), ("f", "fc")]
    tpu = activation_sites(residual.proto, _all_tensors(float_layers=["conv2", "conv1"]))
    # outputs of float layers stay float; their inputs are whatever the producer wrote
    assert [t for t, _ in tpu] == ["r1", "s", "r2", "g", "f", "y"]
    only_float_reader = activation_sites(residual.proto, _all_tensors(float_layers=["conv1"]))
    assert "x" not in [t for t, _ in only_float_reader]


def test_ort_qdq_placement_equals_quantize_static(residual, tmp_path):
    """The ort_qdq placement must quantise exactly the tensors quantize_static does."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    data = list(batches()())

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x}

    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(residual.proto, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)
    q = onnx.load(dst)
    inits = {t.name for t in q.graph.initializer}
    theirs = {n.input[0].replace("_QuantizeLinear_Input", "") for n in q.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    placement = placement_for(residual.proto, get_profile("ort-qdq"))
    assert {t for t, _ in placement.sites} == theirs
    assert placement.shared == {"f": "g"}  # Flatten reuses its input's parameters


def test_kl_runs_two_passes_and_minmax_one(residual):
    calls = []
    data = list(batches()())

    def factory():
        calls.append(1)
        return iter(data)

    calibrate_activations(residual, get_profile("ncnn-int8"), factory)
    assert len(calls) == 2
    calls.clear()
    calibrate_activations(residual, get_profile("tflite-int8"), factory)
    assert len(calls) == 1


def test_graph_input_site_is_fed_from_the_batch(residual):
    data = list(batches()())
    ranges = calibrate_activations(residual, get_profile("tflite-int8"), lambda: iter(data))
    assert list(ranges)[0] == "x"
    assert ranges["x"].lo == min(float(d.min()) for d in data) and ranges["x"].hi == max(float(d.max()) for d in data)


def test_one_shot_generator_is_refused(residual):
    gen = iter(list(batches()()))
    with pytest.raises(CalibrationError, match="factory"):
        calibrate_activations(residual, get_profile("ncnn-int8"), lambda: gen)


def test_calibrating_twice_gives_byte_identical_tables(residual):
    outputs = []
    for _ in range(2):
        qm = quantize_model(residual, get_profile("ncnn-int8"), batches(), write_model=False)
        tpu = calibrate_activations(residual, get_profile("bm1684-int8"), batches())
        outputs.append((format_ncnn_table(plan_to_ncnn_table(qm.folded, qm.plan)),
                        format_tpu_calibration_table(ranges_to_tpu_table(tpu))))
    assert outputs[0] == outputs[1]
    assert "conv2_param_0" in outputs[0][0] and "\nfc " in outputs[0][0]


def test_sharded_minmax_merged_equals_one_pass(residual):
    tensors = [t for t, _ in activation_sites(residual.proto, get_profile("tflite-int8"))]
    one = run_calibrators(residual, {t: make_calibrator("minmax") for t in tensors}, batches(6))
    data = list(batches(6)())
    shards = [{t: make_calibrator("minmax") for t in tensors} for _ in range(2)]
    for shard, part in zip(shards, (data[:2], data[2:])):
        run_calibrators(residual, shard, lambda part=part: iter(part))
    merged = {t: shards[0][t].merge(shards[1][t]).compute() for t in tensors}
    assert merged == one


def test_build_plan_weights_and_activations(residual):
    profile = get_profile("tflite-int8")
    ranges = calibrate_activations(residual, profile, batches())
    plan = build_plan(residual.proto, profile, ranges)
    assert set(plan.weights) == {"w1", "w2", "wf"}
    assert plan.weights["wf"].scheme.axis == 0  # Gemm transB=1: output channels on axis 0
    assert plan.weights["w1"].scale.shape == (4,) and plan.quantize_bias
    tq = plan.activations[("x", "*")]
    assert tq.zero_point.dtype == np.int32 and -128 <= int(tq.zero_point) <= 127
    # asymmetric int8 covers [lo, hi] with the range nudged to include 0
    lo, hi = ranges["x"].lo, ranges["x"].hi
    assert float(tq.scale) == pytest.approx((hi - lo) / 255, rel=1e-6)


def test_missing_range_is_an_error(residual):
    with pytest.raises(CalibrationError, match="no range"):
        build_plan(residual.proto, get_profile("ncnn-int8"), {})


def test_bn_folded_before_calibration():
    model = onnx.shape_inference.infer_shapes(conv_relu_model())  # what load_model's normalisation does
    folded, pairs = fold_batchnorm(model)
    assert [p.node for p in pairs] == ["conv1"]
    sites = activation_sites(folded, get_profile("ncnn-int8"))
    assert sites == [("input", "conv1"), ("flat", "fc")]


@pytest.mark.parametrize("method", ["kl", "minmax"])
def test_overlapped_sessions_give_identical_ranges(residual, method):
    tensors = [t for t, _ in activation_sites(residual.proto, get_profile("ncnn-int8"))]
    runs = [run_calibrators(residual, {t: make_calibrator(method) for t in tensors}, batches(7), threads=threads,
                            overlap=overlap)
            for threads, overlap in ((2, False), (2, True), (1, None), (3, None))]
    assert all(r == runs[0] for r in runs[1:])


def test_overlapped_sessions_feed_batches_in_order(residual):
    """Two sessions run at once, but every calibrator still sees the batches in data order."""
    minmax = type(make_calibrator("minmax"))

    def record(overlap: bool) -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []

        class Recorder(minmax):
            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name

            def partial_fit(self, batch):
                seen.append((self.name, float(np.asarray(batch, np.float64).sum())))
                return super().partial_fit(batch)

        run_calibrators(residual, {n: Recorder(n) for n in ("x", "r1")}, batches(9), threads=2, overlap=overlap)
        return seen

    overlapped = record(True)
    assert overlapped == record(False)
    assert [v for n, v in overlapped if n == "x"] == [float(d.astype(np.float64).sum()) for d in batches(9)()]
