"""Where activations are quantised: the three placements of :mod:`harness.quant.profiles`.

The result is a :class:`Placement`: activation sites ``(tensor, consumer)`` in topological order,
plus ``shared``: sites that reuse another tensor's parameters instead of having their own range
(onnxruntime gives a Reshape/Flatten/MaxPool output the parameters of its input, so requantising
there is a no-op on the int8 grid).

onnxruntime QDQ rules (learned from ``onnxruntime/quantization/qdq_quantizer.py``, ``registry.py``
and ``operators/*.py`` of the installed 1.32; re-implemented here, not copied):

* ``quantize_static`` quantises the union of its QLinear and QDQ op registries; nodes are visited
  in graph order and each *marks* tensors; every marked tensor gets one Q/DQ pair after its producer
  (all consumers read it: our ``*``).
* Conv, ConvTranspose, Gemm: mark data input and output; the weight is quantised (per-tensor by
  default), the bias as int32. MatMul: every non-initializer input and the output.
* Relu, Clip ("removable activations"): only when their input is already marked. With asymmetric
  activations, if the input has a single consumer and is not a graph input/output, the activation
  node is removed and its producer writes the activation's output, which is then marked: the
  clamp is done by the quantisation range itself. We keep the Relu/Clip in the graph and mark only
  its output: on the quantised grid that is the same computation. Otherwise input and output.
* "Direct 8-bit" ops (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, AveragePool,
  MaxPool, Resize, TopK, Gather, Pad): output marked with the *input's* parameters, only when the
  input is already marked. Split: input marked, outputs share it.
* Every other op of the registries (Add, Mul, Concat, GlobalAveragePool, Softmax, Sigmoid,
  LeakyRelu, ...): every float input and output. Where: output only when both data inputs are
  marked. Constant (initializer) inputs of those ops are left float here (onnxruntime quantises
  them too; the plan has no slot for non-weight constants).
* Excluded nodes (our ``float_layers``, ORT's ``nodes_to_exclude``) mark nothing; their tensors
  may still be marked by a neighbour.

Float layers in the other placements: ``conv_inputs`` simply drops the layer's input edge (ncnn's
``#`` line). ``all_tensors`` follows tpu-mlir's qtable: a tensor is quantised when its producer is
quantised, so a float layer's *outputs* stay float, and its inputs are whatever their producers
wrote (a float layer reading an int8 producer reads the dequantised value). A graph input is
quantised unless every consumer is a float layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from harness.model.graph import node_display_name, tensor_list, topological_nodes
from harness.model.graph_roles import non_activations
from harness.quant.plan import ALL_CONSUMERS
from harness.quant.tpu_mlir import TopGraph

_CONV_LIKE = frozenset({"Conv", "ConvTranspose", "Gemm"})
_REMOVABLE = frozenset({"Relu", "Clip"})
_SHARE_OUTPUT = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "AveragePool",
                           "MaxPool", "Resize", "TopK", "Gather", "GatherElements", "Pad"})
_GENERIC = frozenset({"Add", "Mul", "Concat", "GlobalAveragePool", "Softmax", "Sigmoid", "LeakyRelu", "ArgMax",
                      "InstanceNormalization", "LayerNormalization", "BatchNormalization", "CumSum"})


@dataclass(frozen=True)
class Placement:
    """Activation sites in topological order and the sites that borrow another tensor's range."""

    sites: list[tuple[str, str]]
    shared: dict[str, str] = field(default_factory=dict)

    def tensors_to_calibrate(self) -> list[str]:
        """Tensors needing a calibrator (one per tensor, not per edge), in site order."""
        seen: dict[str, None] = {}
        for tensor, _ in self.sites:
            seen.setdefault(self.shared.get(tensor, tensor), None)
        return list(seen)


def weight_nodes(proto: onnx.ModelProto, op_types: frozenset[str]) -> list[onnx.NodeProto]:
    """Nodes whose weight (input 1) is an initializer and whose op type is in ``op_types``."""
    inits = {t.name for t in proto.graph.initializer}
    return [n for n in topological_nodes(proto.graph)
            if n.op_type in op_types and len(n.input) > 1 and n.input[1] in inits and n.input[0] not in inits]


def compute_placement(proto: onnx.ModelProto, *, placement: str, weight_op_types: frozenset[str],
                      float_layers: frozenset[str]) -> Placement:
    """Sites of ``placement`` on ``proto`` (normally the BN-folded model).

    Only activations are sites, in every placement: a tensor that feeds a shape, scale, index or
    axis input, or is computed from constants and shapes, never is (:mod:`harness.model.graph_roles`).
    """
    roles = non_activations(proto)
    floats = {t.name for t in tensor_list(proto, include_inputs=True) if t.name not in roles}
    if placement == "conv_inputs":
        sites = [(n.input[0], node_display_name(n)) for n in weight_nodes(proto, weight_op_types)
                 if node_display_name(n) not in float_layers and n.input[0] in floats]
        return Placement(sites=sites)
    if placement == "all_tensors":
        return Placement(sites=_all_tensors(proto, floats, float_layers))
    if placement == "tpu_mlir":  # all_tensors of tpu-mlir's fused top graph (see harness.quant.tpu_mlir)
        top = set(TopGraph(proto).tensors)
        return Placement(sites=[s for s in _all_tensors(proto, floats, float_layers) if s[0] in top])
    if placement == "ort_qdq":
        return _ort_qdq(proto, floats, float_layers)
    raise ValueError(f"unknown placement {placement!r}")


def _all_tensors(proto: onnx.ModelProto, floats: set[str], float_layers: frozenset[str]) -> list[tuple[str, str]]:
    consumers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node_display_name(node))
    sites = []
    for info in tensor_list(proto, include_inputs=True):
        if info.name not in floats:
            continue
        if info.op_type == "Input":
            readers = consumers.get(info.name, [])
            if readers and all(r in float_layers for r in readers):
                continue
        elif info.node_name in float_layers:
            continue
        sites.append((info.name, ALL_CONSUMERS))
    return sites


def _ort_qdq(proto: onnx.ModelProto, floats: set[str], float_layers: frozenset[str]) -> Placement:
    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    graph_io = {i.name for i in graph.input} | {o.name for o in graph.output}
    n_consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            n_consumers[name] = n_consumers.get(name, 0) + 1
    marked: dict[str, str | None] = {}  # tensor -> provider tensor (None: own range); insertion = mark order

    def mark(name: str, provider: str | None = None) -> None:
        if not name or name in inits or name not in floats:
            return
        if provider is not None:
            marked[name] = marked.get(provider) or provider  # chains of sharing resolve to the root
        elif name not in marked:
            marked[name] = None

    for node in topological_nodes(graph):
        if node_display_name(node) in float_layers:
            continue
        op, ins, outs = node.op_type, list(node.input), list(node.output)
        if op in _CONV_LIKE:
            mark(ins[0])
            mark(outs[0])
        elif op == "MatMul":
            for name in ins + outs:
                mark(name)
        elif op in _REMOVABLE:
            if ins[0] not in marked:
                continue
            upstream = ins[0]
            if marked[upstream] is None and n_consumers.get(upstream, 0) == 1 and upstream not in graph_io:
                del marked[upstream]  # node "removed": its producer writes our output directly
            mark(outs[0])
        elif op in _SHARE_OUTPUT:
            if ins[0] in marked:
                mark(outs[0], provider=ins[0])
        elif op == "Split":
            mark(ins[0])
            for out in outs:
                mark(out, provider=ins[0])
        elif op == "Where":
            if len(ins) == 3 and ins[1] in marked and ins[2] in marked:
                mark(outs[0])
        elif op in _GENERIC:
            for name in ins + outs:
                mark(name)
    order = {t.name: t.index for t in tensor_list(proto, include_inputs=True)}
    names = sorted(marked, key=lambda n: order[n])
    shared = {n: p for n, p in marked.items() if p is not None and p in marked}
    return Placement(sites=[(n, ALL_CONSUMERS) for n in names], shared=shared)
