"""Small ONNX models built with onnx.helper, shared by the tests (no files from elsewhere)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_relu_model(*, opset: int = 13, ir_version: int | None = None, init_as_inputs: bool = False, seed: int = 0) -> onnx.ModelProto:
    """input [1,3,8,8] -> Conv(4) -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm(2) -> output."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "bn_scale"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bn_bias"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bn_mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "bn_var"),
        numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv_out"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv_out", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn_out"], name="bn1"),
        helper.make_node("Relu", ["bn_out"], ["relu_out"], name=""),
        helper.make_node("GlobalAveragePool", ["relu_out"], ["pool_out"], name="pool"),
        helper.make_node("Flatten", ["pool_out"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])]
    if init_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "conv_relu", inputs, [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version if ir_version is not None else min(model.ir_version, 8)
    return model


def depthwise_model(*, seed: int = 0, dw_scale: float = 1.0) -> onnx.ModelProto:
    """input [1,3,16,16] -> conv1 (3->4) -> Relu -> dw (depthwise 3x3) -> GlobalAveragePool -> Flatten -> fc(2).

    The channels are deliberately unbalanced the way BN folding leaves real MobileNets: conv1's output channels
    are scaled (0.01, 1, 1, 1) and the depthwise weights inversely (100, 1, 1, 1), so every channel of the dw
    output carries signal, but one scale for all dw weights (per-tensor) leaves three channels with about one
    quantisation level. ``dw_scale`` multiplies the dw weights (a "changed model" for fp32-vs-golden).
    """
    rng = np.random.default_rng(seed)
    out_scale = np.array([0.01, 1.0, 1.0, 1.0], np.float32)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * out_scale[:, None, None, None]
    dw_w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32) / out_scale[:, None, None, None] * dw_scale
    inits = [
        numpy_helper.from_array(conv_w, "conv1_w"),
        numpy_helper.from_array((rng.standard_normal(4) * out_scale).astype(np.float32), "conv1_b"),
        numpy_helper.from_array(dw_w.astype(np.float32), "dw_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "dw_b"),
        numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1_w", "conv1_b"], ["conv1_out"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Conv", ["relu1_out", "dw_w", "dw_b"], ["dw_out"], name="dw", pads=[1, 1, 1, 1], group=4),
        helper.make_node("GlobalAveragePool", ["dw_out"], ["pool_out"], name="pool"),
        helper.make_node("Flatten", ["pool_out"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "depthwise", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
