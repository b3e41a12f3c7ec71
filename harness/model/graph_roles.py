"""Which float tensors of a graph are activations, and which only parameterise an op.

A quantising toolchain puts int8 codes on the data that flows through the network. It never
quantises what an op reads as a *parameter*: the scales or sizes of a Resize, the shape of a
Reshape, the starts of a Slice, the indices of a Gather, an axis, a count. Those are folded at
compile time or computed in integers. Giving them Q/DQ breaks the model rather than simulating it:
on a real RetinaFace export the ``scales`` of a Resize (an Identity of the constant [1, 1, 2, 2])
were KL-calibrated to [1.0, 1.0015], the Resize stopped upsampling and the next Add failed.

A tensor is a *non-activation* when

* it is **static**: an initializer, a Constant, a Shape/Size output, or computed only from static
  tensors (Identity or Cast of a constant, the Shape -> Gather -> Concat chains exporters write
  for dynamic reshapes, a ConstantOfShape);
* it is **parameter-only**: every use of it is a parameter slot (:data:`PARAMETER_SLOTS`) or a node
  whose outputs are all non-activations, and it is not a graph output. This is what carries the
  role backwards through float arithmetic on the way to a parameter (``Cast -> Mul -> Cast`` of a
  computed size);
* or it is not a float tensor at all (indices, masks, shapes), or its type is unknown.

Every placement (:mod:`harness.quant.placement`) and calibration use :func:`non_activations`, so
no profile can quantise one of these tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from harness.model.graph import FLOAT_TYPES, node_display_name, topological_nodes

_REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")

#: Input slots that parameterise an op (shape, size, scale, index, axis, count, bound, statistics),
#: by op type; every other slot is data. Slots an older opset has as attributes simply never occur.
PARAMETER_SLOTS: Mapping[str, frozenset[int]] = {
    **{op: frozenset({1}) for op in _REDUCE_OPS},  # axes (an input since opset 13/18)
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),  # opset 10: scales; opset 11+: roi, scales, sizes
    "Upsample": frozenset({1}), "Slice": frozenset({1, 2, 3, 4}),
    "Gather": frozenset({1}), "GatherElements": frozenset({1}), "GatherND": frozenset({1}),
    "Scatter": frozenset({1}), "ScatterElements": frozenset({1}), "ScatterND": frozenset({1}),
    "Pad": frozenset({1, 2, 3}), "TopK": frozenset({1}), "Unsqueeze": frozenset({1}), "Squeeze": frozenset({1}),
    "Split": frozenset({1}), "CumSum": frozenset({1}), "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}), "OneHot": frozenset({0, 1, 2}), "Trilu": frozenset({1}),
    "NonMaxSuppression": frozenset({2, 3, 4}), "RoiAlign": frozenset({2}), "Compress": frozenset({1}),
    "Clip": frozenset({1, 2}), "Dropout": frozenset({1, 2}),
    "BatchNormalization": frozenset({1, 2, 3, 4}), "InstanceNormalization": frozenset({1, 2}),
    "LayerNormalization": frozenset({1, 2}),
    "QuantizeLinear": frozenset({1, 2}), "DequantizeLinear": frozenset({1, 2}),
}

#: Ops whose output depends on the *shape* of their input, never on its values.
_SHAPE_OPS = frozenset({"Shape", "Size", "EyeLike"})


def non_activations(proto: onnx.ModelProto) -> dict[str, str]:
    """``{tensor: why}`` for every tensor of ``proto`` (graph inputs and node outputs) that is not an
    activation; ``why`` reads e.g. "static: computed from constants" or "feeds Resize 'up' input 2"."""
    graph = proto.graph
    nodes = topological_nodes(graph)
    types = _elem_types(proto)
    why: dict[str, str] = {t.name: "static: an initializer" for t in graph.initializer}
    for node in nodes:
        outs = [o for o in node.output if o]
        if node.op_type == "Constant":
            reason = "static: a Constant"
        elif node.op_type in _SHAPE_OPS:
            reason = f"static: {node.op_type} of a tensor"
        elif _all_static(node, why):
            reason = "static: computed from constants and shapes"
        else:
            continue
        for out in outs:
            why.setdefault(out, reason)

    graph_outputs = {o.name for o in graph.output}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in nodes:
        for slot, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node, slot))

    def non_data_use(node: onnx.NodeProto, slot: int) -> str | None:
        if slot in PARAMETER_SLOTS.get(node.op_type, ()):
            return f"feeds {node.op_type} {node_display_name(node)!r} input {slot}"
        if node.op_type in _SHAPE_OPS:
            return f"only its shape is read ({node.op_type} {node_display_name(node)!r})"
        if node.output and all(o in why for o in node.output if o):
            return f"only feeds parameters (through {node.op_type} {node_display_name(node)!r})"
        return None

    candidates = [i.name for i in graph.input] + [o for node in nodes for o in node.output if o]
    for name in reversed(candidates):  # reverse topological: a node's readers are decided first
        if name in why or name in graph_outputs or not uses.get(name):
            continue
        reasons = [non_data_use(node, slot) for node, slot in uses[name]]
        if all(reasons):
            why[name] = "parameter: " + reasons[0]
    for name in candidates:
        if name not in why and types.get(name) not in FLOAT_TYPES:
            why[name] = "not a float tensor"
    return why


def is_activation(name: str, roles: Mapping[str, str]) -> bool:
    """``name`` is an activation given ``roles`` = :func:`non_activations` of its model."""
    return name not in roles


def _all_static(node: onnx.NodeProto, why: Mapping[str, str]) -> bool:
    """Every input static (a node without inputs too), and no subgraph that could read activations."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return False
    return all(name in why and why[name].startswith("static") for name in node.input if name)


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    graph = proto.graph
    return {vi.name: vi.type.tensor_type.elem_type
            for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
