"""Layerwise comparison on synthetic sequences whose first divergent layer is known."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.compare import LayerwiseComparison, Tolerance, ToleranceSet, predecessor_map
from harness.compare.layerwise import layer_regions
from harness.errors import ConfigError
from harness.model import TensorInfo, tensor_list
from tests.model_factory import conv_relu_model

N_LAYERS = 10


def chain(n: int = N_LAYERS) -> list[TensorInfo]:
    return [TensorInfo(i, f"t{i}", f"node{i}", "Conv" if i % 2 == 0 else "Relu", 1, (1, 64)) for i in range(n)]


def with_cosine(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """A tensor whose cosine with ``x`` is exactly ``c`` (up to float64 rounding)."""
    e = rng.standard_normal(x.shape)
    e -= (e.ravel() @ x.ravel()) / (x.ravel() @ x.ravel()) * x
    e *= np.linalg.norm(x) / np.linalg.norm(e)
    return c * x + math.sqrt(max(1 - c * c, 0.0)) * e


def run(cosines: list[float], *, local: dict[int, float] | None = None, gate: float = 0.99, images: int = 2):
    rng = np.random.default_rng(0)
    cmp = LayerwiseComparison(chain(len(cosines)), tolerances=ToleranceSet(default=Tolerance.of(cosine=gate, source="test")))
    for _ in range(images):
        for i, c in enumerate(cosines):
            ref = rng.standard_normal((1, 64))
            cmp.update_accumulated(f"t{i}", ref, with_cosine(ref, c, rng))
            if local and i in local:
                cmp.update_local(f"t{i}", ref, with_cosine(ref, local[i], rng))
    return cmp


def test_with_cosine_helper_is_exact() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(100)
    y = with_cosine(x, 0.9, rng)
    assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) == pytest.approx(0.9, abs=1e-12)


def test_big_error_at_layer5_is_found_not_its_heirs() -> None:
    # t5 is a Relu: it adds no error of its own, so the jump is blamed on the quantisation of what it reads (t4)
    cos = [0.9999] * 5 + [0.90, 0.89, 0.885, 0.88, 0.87]
    div = run(cos).first_divergent_layer()
    assert div is not None and div.index == 5 and div.name == "t5" and div.reason == "quantization"
    assert div.op_type == "Relu" and div.node_name == "node5"
    assert div.cause_node == "node4" and div.cause_op_type == "Conv" and div.cause_tensor == "t4"
    assert div.accumulated.cosine == pytest.approx(0.90, abs=1e-9) and div.metric == "cosine"
    assert div.inherited == pytest.approx(0.9999, abs=1e-9) and div.bound == 0.99 and div.inherited_from == "t4"
    assert "node5" in div.describe() and "quantisation of tensor 't4'" in div.describe()


def test_a_jump_at_a_weighted_layer_without_input_error_is_its_own() -> None:
    cos = [0.9999] * 6 + [0.90, 0.89, 0.885, 0.88]  # t6 is a Conv
    div = run(cos, local={5: 0.99995}).first_divergent_layer()
    assert div.index == 6 and div.reason == "jump" and div.cause_node == "node6" and div.cause_op_type == "Conv"


def test_noisy_early_layers_under_threshold_are_not_chosen() -> None:
    cos = [0.991, 0.9905, 0.992, 0.993, 0.992, 0.80, 0.79, 0.79, 0.78, 0.78]
    assert run(cos).first_divergent_layer().index == 5


def test_the_quantisation_of_the_input_explains_the_jump() -> None:
    # t6 (Conv) jumps; the quantisation of its input t5 (local cosine 0.93) accounts for it: keep t5's producer
    cos = [0.9999] * 6 + [0.93, 0.92, 0.92, 0.92]
    div = run(cos, local={5: 0.93}).first_divergent_layer()
    assert div.index == 6 and div.reason == "quantization" and div.cause_tensor == "t5"
    assert div.cause_node == "node5" and div.cause_local == pytest.approx(0.93, abs=1e-9)


def test_slow_drift_then_big_jump_picks_the_jump() -> None:
    cos = [0.998, 0.995, 0.992, 0.989, 0.987, 0.985, 0.70, 0.69, 0.69, 0.68]
    div = run(cos).first_divergent_layer()
    assert div.index == 6 and div.reason == "jump"


def test_pure_drift_reports_earliest_crossing() -> None:
    cos = [1 - 0.003 * (i + 1) for i in range(N_LAYERS)]  # 0.997, 0.994, 0.991, 0.988 ...
    div = run(cos).first_divergent_layer()
    assert div.index == 3 and div.reason == "drift"


def test_nothing_crosses() -> None:
    result = run([0.999] * N_LAYERS).compute()
    assert result and result.first_divergent_layer() is None
    assert result.first_divergent_layer(0.9999).index == 0  # a float gate overrides the tolerances


def test_per_tensor_tolerance_overrides() -> None:
    cos = [0.9999] * 5 + [0.95] * 5
    cmp = run(cos)
    cmp.tolerances = ToleranceSet(default=Tolerance.of(cosine=0.99), overrides=(("t5", Tolerance.of(cosine=0.9)),))
    assert cmp.first_divergent_layer().index == 6


def test_table_and_dataframe_in_topological_order() -> None:
    result = run([0.9999] * 5 + [0.9] * 5).compute()
    df = result.to_dataframe()
    assert list(df["name"]) == [f"t{i}" for i in range(N_LAYERS)]
    assert list(df["passed"]) == [True] * 5 + [False] * 5
    assert df["acc_cosine"].iloc[5] == pytest.approx(0.9, abs=1e-9)
    assert math.isnan(df["local_cosine"].iloc[0])
    assert not result and [r.name for r in result.failed_rows] == [f"t{i}" for i in range(5, 10)]


def test_merge_equals_single_stream() -> None:
    a = run([0.99, 0.9], images=1)
    b = run([0.99, 0.9], images=1)
    both = run([0.99, 0.9], images=2)  # same rng sequence: images 1 and 2
    merged = a.merge(b).compute().rows[1].accumulated
    assert merged.count == both.compute().rows[1].accumulated.count == 128
    assert merged.cosine == pytest.approx(0.9, abs=1e-9)


def test_update_batch_and_unknown_name() -> None:
    cmp = LayerwiseComparison(chain(2))
    x = np.ones((1, 4))
    cmp.update({"t0": x, "t1": x, "other": x}, {"t0": x, "t1": -x}, {"t0": (x, x)})
    rows = cmp.compute().rows
    assert rows[0].accumulated.cosine == 1.0 and rows[1].accumulated.cosine == -1.0 and rows[0].local.cosine == 1.0
    with pytest.raises(ConfigError, match="'nope'"):
        cmp.update_accumulated("nope", x, x)


def test_predecessors_from_a_real_graph() -> None:
    proto = conv_relu_model()
    from harness.model import normalise_model

    proto, _ = normalise_model(proto)
    tensors = tensor_list(proto)
    preds = predecessor_map(proto, tensors)
    assert preds["bn_out"] == ("conv_out",) and preds["conv_out"] == ()
    cmp = LayerwiseComparison(tensors, regions=layer_regions(proto, tensors),
                              tolerances=ToleranceSet(default=Tolerance.of(cosine=0.99, source="test")))
    rng = np.random.default_rng(0)
    for t in tensors:
        ref = rng.standard_normal(16)
        c = 0.5 if t.name == "relu_out" else 0.9999
        cmp.update_accumulated(t.name, ref, with_cosine(ref, c, rng))
    div = cmp.first_divergent_layer()
    assert div.name == "relu_out" and div.op_type == "Relu"


def _fused_conv_chain() -> onnx.ModelProto:
    """input -> Conv c1 -> a -> Conv c2 -> b -> Clip -> r: b is fused into its Clip and never measured."""
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "w"], ["b"], name="c2"),
             helper.make_node("Clip", ["b"], ["r"], name="clip")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 2, 2, 2])], [w])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _fused_run(cos_a: float, cos_r: float, local_a: float | None = None):
    proto = _fused_conv_chain()
    tensors = [t for t in tensor_list(proto) if t.name != "b"]  # the deployed layer list
    cmp = LayerwiseComparison(tensors, tolerances=ToleranceSet(default=Tolerance.of(cosine=0.9, source="test")),
                              regions=layer_regions(proto, tensors))
    rng = np.random.default_rng(1)
    for _ in range(2):
        for name, c in (("a", cos_a), ("r", cos_r)):
            ref = rng.standard_normal((1, 64))
            cmp.update_accumulated(name, ref, with_cosine(ref, c, rng))
        if local_a is not None:
            ref = rng.standard_normal((1, 64))
            cmp.update_site("a", "*", ref, with_cosine(ref, local_a, rng))
    return cmp.first_divergent_layer()


def test_an_unmeasured_input_is_not_taken_as_perfect() -> None:
    # Before: r's input b is not measured, so r inherited 1.0 and was called a jump; keeping the Clip in float
    # changed nothing. Its nearest measured ancestor a already sits at 0.939: a drift.
    regions = layer_regions(_fused_conv_chain(), [t for t in tensor_list(_fused_conv_chain()) if t.name != "b"])
    assert regions["r"].inputs == ("a",) and [n for n, _ in regions["r"].nodes] == ["clip", "c2"]
    div = _fused_run(0.939, 0.89)
    assert div.name == "r" and div.reason == "drift" and div.inherited == pytest.approx(0.939, abs=1e-9)
    assert div.cause_node is None and div.drift_start == "a"


def test_a_jump_inside_a_fused_conv_clip_names_the_conv() -> None:
    div = _fused_run(0.9999, 0.85)
    assert div.reason == "jump" and div.name == "r" and div.cause_node == "c2" and div.cause_op_type == "Conv"
    div = _fused_run(0.9999, 0.85, local_a=0.85)  # the quantisation of a explains it: a's producer
    assert div.reason == "quantization" and div.cause_tensor == "a" and div.cause_node == "c1"


def test_every_bound_can_mark_the_first_divergent_layer() -> None:
    # cosine stays above its bound everywhere; an SQNR bound alone decides
    tols = ToleranceSet(default=Tolerance.of(cosine=0.9, sqnr_db=20.0, source="test"))
    cos = [0.99999] * 5 + [0.99] * 5  # with_cosine: SQNR = -10 log10(2 (1 - c)), 47 dB then 17 dB
    cmp = run(cos)
    cmp.tolerances = tols
    div = cmp.first_divergent_layer()
    assert div is not None and div.index == 5 and div.metric == "sqnr_db" and div.bound == 20.0
