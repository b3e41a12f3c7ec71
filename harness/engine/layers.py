"""Which tensors a suite compares layer by layer: the layers of the *deployed* graph.

Every int8 toolchain fuses an activation into the layer before it (ncnn Convolution+ReLU, tpu-mlir and
nnie_mapper likewise), and quantises the fused output, never the pre-activation one. So the layer list is
every float tensor of the BN-folded model in topological order, except a Conv/Gemm/MatMul/Add output whose
only consumer is an activation (Relu, Clip, LeakyRelu, PRelu, HardSwish, HardSigmoid): that tensor does not
exist on the device. This also keeps golden dumps small (the demo detector: 8.8 MB of activations per image
with every tensor, about a third of that without pre-BN and pre-activation tensors) and the tapped session
fast (each exposed tensor costs onnxruntime a layout conversion; see ``benchmarks/bench_taps.py``).
"""

from __future__ import annotations

import numpy as np
import onnx

from harness.model.graph import TensorInfo, tensor_list

FUSED_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "PRelu", "HardSwish", "HardSigmoid"})


def fused_away(proto: onnx.ModelProto) -> set[str]:
    """Tensors that a toolchain fuses into the activation that reads them."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    gone: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in FUSED_PRODUCERS:
            continue
        for out in node.output:
            users = consumers.get(out, [])
            if out not in outputs and len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS:
                gone.add(out)
    return gone


def layer_tensors(proto: onnx.ModelProto) -> list[TensorInfo]:
    """The compared tensors of ``proto`` (BN already folded), in topological order."""
    gone = fused_away(proto)
    return [t for t in tensor_list(proto) if t.name not in gone]


def sample_layer(values: np.ndarray, limit: int | None) -> np.ndarray:
    """``values`` ``[N, ...]`` (one row per probe image) reduced to at most ``limit`` evenly spaced elements per
    row, ``[N, k]``; unchanged when ``limit`` is None or the row is small enough.

    For golden dumps of large models (``[data] probe_layer_elements``): MobileNetV2's layers are 14 MB per image
    even in float16, over the whole golden budget. A fixed, evenly spaced sample still catches a drifting
    layer (weights, runtime, preprocessing) and names it; the positions depend only on the row size and
    ``limit``, so the writer and the check pick the same elements.
    """
    row = int(np.prod(values.shape[1:], dtype=np.int64))
    if limit is None or row <= limit:
        return values
    positions = np.linspace(0, row - 1, num=limit).round().astype(np.int64)
    return values.reshape(values.shape[0], row)[:, positions]
