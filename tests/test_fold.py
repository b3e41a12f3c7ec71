"""BatchNorm folding: outputs unchanged to 1e-5 relative, names downstream kept, shared weights safe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.model import load_model, make_session, tensor_list
from harness.quant.fold import fold_batchnorm

from model_factory import conv_relu_model

REL_TOL = 1e-5


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(proto.SerializeToString(), optimization="disabled").run(None, {"input": x})[0]


def test_conv_bn_folds_and_outputs_match() -> None:
    proto = conv_relu_model()
    folded, pairs = fold_batchnorm(proto)
    assert [(p.node, p.batchnorm, p.removed_tensor) for p in pairs] == [("conv1", "bn1", "conv_out")]
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    assert folded.graph.node[0].output[0] == "bn_out"  # downstream names kept
    onnx.checker.check_model(folded)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    x = np.concatenate([x, x * 50])  # large activations too
    for xi in np.split(x, x.shape[0]):
        assert _rel(_run(folded, xi), _run(proto, xi)) <= REL_TOL


def _gemm_bn_model(*, trans_b: int, beta: float, shared: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 6) if trans_b else (6, 5)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "c"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 5).astype(np.float32), "g"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "m"),
        numpy_helper.from_array(rng.uniform(0.1, 2, 5).astype(np.float32), "v"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w", "c"], ["y"], name="fc", transB=trans_b, beta=beta, alpha=0.5),
        helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], name="bn", epsilon=1e-3),
    ]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 5])]
    if shared:  # the same weight read by a second Gemm whose result must not change
        nodes.append(helper.make_node("Gemm", ["input", "w"], ["y2"], name="fc2", transB=trans_b))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 6])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_gemm_bn_folds(trans_b: int, beta: float) -> None:
    proto = _gemm_bn_model(trans_b=trans_b, beta=beta, shared=True)
    folded, pairs = fold_batchnorm(proto)
    assert [p.node for p in pairs] == ["fc"]
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    sess_a = make_session(proto.SerializeToString(), optimization="disabled")
    sess_b = make_session(folded.SerializeToString(), optimization="disabled")
    for a, b in zip(sess_a.run(None, {"input": x}), sess_b.run(None, {"input": x})):
        assert _rel(b, a) <= REL_TOL


def test_pre_bn_tensor_used_twice_is_not_folded() -> None:
    proto = conv_relu_model()
    proto.graph.output.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None))
    _, pairs = fold_batchnorm(proto)
    assert pairs == []


@pytest.mark.realmodel
def test_ultraface_folds_every_bn(realmodels_dir: Path) -> None:
    model = load_model(realmodels_dir / "ultraface" / "onnx" / "version-RFB-320.onnx")
    n_bn = sum(n.op_type == "BatchNormalization" for n in model.proto.graph.node)
    folded, pairs = fold_batchnorm(model.proto)
    assert n_bn > 0 and len(pairs) == n_bn
    assert {t.name for t in tensor_list(folded)} >= {t.name for t in tensor_list(model.proto)} - {p.removed_tensor for p in pairs}
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 240, 320)).astype(np.float32)
    ref = make_session(model.serialized(), optimization="disabled").run(None, {"input": x})
    got = make_session(folded.SerializeToString(), optimization="disabled").run(None, {"input": x})
    for a, b in zip(got, ref):
        assert _rel(a, b) <= REL_TOL


@pytest.mark.parametrize("feed", ["identity", "constant", "identity_chain"])
def test_parameters_through_constant_or_identity_nodes_are_folded(feed: str) -> None:
    """PyTorch exports deduplicate parameters into Identity (or Constant) nodes; toolchains still fold the pair."""
    proto = conv_relu_model()
    graph = proto.graph
    bn = next(n for n in graph.node if n.op_type == "BatchNormalization")
    conv = next(n for n in graph.node if n.op_type == "Conv")
    inits = {t.name: t for t in graph.initializer}
    fed = [*bn.input[1:5], conv.input[1]]
    new_nodes = []
    for name in fed:
        src = inits[name]
        if feed == "constant":
            new_nodes.append(helper.make_node("Constant", [], [f"{name}_c"], name=f"const_{name}", value=src))
            graph.initializer.remove(src)
            replacement = f"{name}_c"
        else:
            new_nodes.append(helper.make_node("Identity", [name], [f"{name}_i"], name=f"id_{name}"))
            replacement = f"{name}_i"
            if feed == "identity_chain":
                new_nodes.append(helper.make_node("Identity", [replacement], [f"{name}_ii"], name=f"id2_{name}"))
                replacement = f"{name}_ii"
        for node in (bn, conv):
            node.input[:] = [replacement if i == name else i for i in node.input]
    for i, node in enumerate(new_nodes):
        graph.node.insert(i, node)
    onnx.checker.check_model(proto)
    folded, pairs = fold_batchnorm(proto)
    assert [(p.node, p.batchnorm) for p in pairs] == [("conv1", "bn1")]
    assert {n.op_type for n in folded.graph.node} & {"BatchNormalization", "Identity", "Constant"} == set()
    onnx.checker.check_model(folded)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert _rel(_run(folded, x), _run(proto, x)) <= REL_TOL
