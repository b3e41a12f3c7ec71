"""Fold BatchNormalization into the Conv or Gemm before it, as every int8 toolchain does first.

A deployed int8 network has no BatchNorm: ncnn, tpu-mlir, TFLite and nnie_mapper all fold it into
the preceding layer's weights and bias before computing weight scales, so the harness must quantise
the folded weights too, or its per-channel weight scales would not be the device's.

Folding is done in float64 and rounded once to float32; outputs change by float rounding only
(the tests hold it to 1e-5 relative). A folded node keeps its name and writes the BatchNorm's
output tensor, so every tensor downstream keeps its name; the Conv's pre-BN tensor disappears.
New initializers get fresh names, because a weight shared with another node must not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from harness.model.graph import fresh_name, graph_constants, node_display_name


@dataclass(frozen=True)
class FoldedPair:
    """One folding: which node absorbed which BatchNormalization."""

    node: str
    batchnorm: str
    removed_tensor: str


def fold_batchnorm(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[FoldedPair]]:
    """A copy of ``proto`` with every foldable Conv->BN and Gemm->BN pair folded."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inits = _static_values(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    taken = {t.name for t in graph.initializer} | set(producers) | {i.name for i in graph.input}

    folded: list[FoldedPair] = []
    remove: list[onnx.NodeProto] = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        producer = producers.get(bn.input[0])
        if producer is None or producer.op_type not in ("Conv", "Gemm"):
            continue
        if len(consumers.get(bn.input[0], [])) != 1 or bn.input[0] in outputs:
            continue  # the pre-BN tensor is used elsewhere: folding would change that use
        if not all(name in inits for name in bn.input[1:5]) or not all(n in inits for n in producer.input[1:]):
            continue  # dynamic weights or statistics cannot be folded ahead of time
        scale, shift = _bn_affine(bn, inits)
        if producer.op_type == "Conv":
            ok = _fold_into_conv(producer, scale, shift, graph, inits, taken)
        else:
            ok = _fold_into_gemm(producer, scale, shift, graph, inits, taken)
        if not ok:
            continue
        folded.append(FoldedPair(node_display_name(producer), node_display_name(bn), bn.input[0]))
        producer.output[0] = bn.output[0]
        remove.append(bn)
    for bn in remove:
        graph.node.remove(bn)
    _drop_unused(graph)
    _drop_dead_constants(graph, static=set(inits) & set(consumers))
    # value_info of removed tensors would describe tensors that no longer exist
    gone = {pair.removed_tensor for pair in folded}
    kept_vi = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept_vi)
    return model, folded


def _static_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every tensor known before the model runs: initializers, Constant outputs, and Identity outputs of those.
    PyTorch exports often feed a BatchNorm's statistics or a Conv's weights through Constant or Identity
    nodes (deduplicated parameters); toolchains fold those pairs too, so the harness must."""
    values = graph_constants(graph)
    for node in graph.node:  # topological order: an Identity chain resolves front to back
        if node.op_type == "Identity" and node.input and node.input[0] in values and node.output:
            values[node.output[0]] = values[node.input[0]]
    return values


def _bn_affine(bn: onnx.NodeProto, inits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """BN as ``y = x * scale + shift`` per channel, in float64."""
    gamma, beta, mean, var = (inits[n].astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _fold_into_conv(conv, scale, shift, graph, inits, taken) -> bool:
    w = inits[conv.input[1]].astype(np.float64)
    if w.shape[0] != scale.size:
        return False
    b = inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
    w_new = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b_new = b * scale + shift
    _set_inputs(conv, graph, taken, {1: ("W", w_new), 2: ("B", b_new)})
    return True


def _fold_into_gemm(gemm, scale, shift, graph, inits, taken) -> bool:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    w = inits[gemm.input[1]].astype(np.float64)
    out_axis = 0 if attrs.get("transB", 0) else 1
    if w.ndim != 2 or w.shape[out_axis] != scale.size:
        return False
    c = inits[gemm.input[2]].astype(np.float64) if len(gemm.input) > 2 and gemm.input[2] else np.zeros(1)
    if c.size not in (1, scale.size):
        return False  # a 2-D C would need per-row folding; leave such a Gemm alone
    w_new = w * (scale[:, None] if out_axis == 0 else scale[None, :])
    c_new = (beta * c.reshape(-1)) * scale + shift  # Y = alpha*A*B' + 1*C'
    _set_inputs(gemm, graph, taken, {1: ("W", w_new), 2: ("C", c_new)})
    for attr in gemm.attribute:
        if attr.name == "beta":
            attr.f = 1.0
    del alpha  # alpha scales A*B, folded weights keep it as is
    return True


def _set_inputs(node, graph, taken: set[str], values: dict[int, tuple[str, np.ndarray]]) -> None:
    base = node_display_name(node)
    for index, (kind, array) in values.items():
        name = fresh_name(f"{base}_{kind}_bnfolded", taken)
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = name


def _drop_unused(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _drop_dead_constants(graph: onnx.GraphProto, *, static: set[str]) -> None:
    """Remove the Constant and Identity nodes of ``static`` tensors (those read before folding) that folding left
    unread (back to front, so a chain goes); nodes that were dead before are not folding's business."""
    outputs = {o.name for o in graph.output}
    for node in reversed(list(graph.node)):
        if node.op_type not in ("Constant", "Identity") or not set(node.output) <= static:
            continue
        used = {name for n in graph.node for name in n.input} | outputs
        if not any(out in used for out in node.output):
            graph.node.remove(node)
