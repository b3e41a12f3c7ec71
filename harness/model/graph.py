"""The topological list of tensors a harness compares, with the node that made each one.

Layer reports, golden ``layers.dat`` files and "first divergent layer" all depend on one stable
order, so it is computed here once: Kahn's algorithm that, among ready nodes, always takes the one
that comes first in the file. For a graph already sorted (the ONNX rule) that is the file order;
for one that is not, it is still deterministic and never depends on dict order.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from harness.errors import ModelFormatError

#: Element types a tap may expose: the float activations a quantizer changes.
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16})

# Ops whose outputs are not activations: constants, and shape arithmetic that folds away.
_NON_ACTIVATION_OPS = frozenset({"Constant", "ConstantOfShape", "Shape", "Size"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the graph, as the harness names and orders it.

    ``index`` is the position in topological order. ``node_name`` falls back to the tensor name
    when the node has none, which is also how ncnn tables name a layer.
    """

    index: int
    name: str
    node_name: str
    op_type: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None

    @property
    def dtype(self) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).name if self.elem_type else "unknown"


def node_display_name(node: onnx.NodeProto) -> str:
    """A node's name, or its first output's name when the exporter left it empty."""
    return node.name or (node.output[0] if node.output else f"<{node.op_type}>")


def topological_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in a deterministic topological order (file order wherever the file allows)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers: dict[str, int] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producers[out] = idx
    waiting_on: list[int] = []
    consumers: dict[str, list[int]] = {}
    for idx, node in enumerate(graph.node):
        pending = {n for n in _node_inputs(node) if n not in available and n in producers}
        unknown = [n for n in _node_inputs(node) if n not in available and n not in producers]
        if unknown:
            raise ModelFormatError(
                f"Node {node_display_name(node)!r} ({node.op_type}) reads tensor {unknown[0]!r}, which nothing produces",
                expected="every node input to be a graph input, an initializer or another node's output",
                remedy="run onnx.checker.check_model on the model and re-export it",
            )
        waiting_on.append(len(pending))
        for name in pending:
            consumers.setdefault(name, []).append(idx)
    ready = [idx for idx, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(idx)
        for out in graph.node[idx].output:
            for consumer in consumers.get(out, ()):
                waiting_on[consumer] -= 1
                if waiting_on[consumer] == 0:
                    heapq.heappush(ready, consumer)
    if len(order) != len(graph.node):
        stuck = [node_display_name(graph.node[i]) for i, c in enumerate(waiting_on) if c > 0][:5]
        raise ModelFormatError(
            f"The graph has a cycle through nodes {stuck}",
            expected="an acyclic ONNX graph",
            remedy="re-export the model",
        )
    return [graph.node[i] for i in order]


def tensor_list(proto: onnx.ModelProto, *, include_inputs: bool = False, float_only: bool = True) -> list[TensorInfo]:
    """Every float activation in topological order: what "all taps" exposes.

    Constants and shape arithmetic are left out (they do not change under quantisation). Graph
    inputs are included only when asked, with op type ``Input``. ``float_only=False`` also lists
    integer tensors (a QDQ model's int8 codes), still leaving out constants and shape arithmetic.
    """
    wanted = FLOAT_TYPES if float_only else None
    types = _value_types(proto)
    result: list[TensorInfo] = []
    if include_inputs:
        for inp in proto.graph.input:
            elem, shape = types.get(inp.name, (0, None))
            if wanted is None or elem in wanted:
                result.append(TensorInfo(len(result), inp.name, inp.name, "Input", elem, shape))
    for node in topological_nodes(proto.graph):
        if node.op_type in _NON_ACTIVATION_OPS:
            continue
        for out in node.output:
            elem, shape = types.get(out, (0, None))
            if out and (elem in FLOAT_TYPES if wanted is not None else elem != 0):
                result.append(TensorInfo(len(result), out, node_display_name(node), node.op_type, elem, shape))
    return result


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs including those captured by subgraphs (If/Loop bodies read outer-scope names)."""
    names = list(node.input)
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for sub in graphs:
            inner = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for sub_node in sub.node:
                inner.update(sub_node.output)
                names.extend(n for n in _node_inputs(sub_node) if n not in inner)
    return names


def _value_types(proto: onnx.ModelProto) -> dict[str, tuple[int, tuple[int | str | None, ...] | None]]:
    out: dict[str, tuple[int, tuple[int | str | None, ...] | None]] = {}
    graph = proto.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        ttype = vi.type.tensor_type
        shape: tuple[int | str | None, ...] | None = None
        if ttype.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim
            )
        out[vi.name] = (ttype.elem_type, shape)
    return out


def fresh_name(base: str, taken: set[str], *, separator: str = "_") -> str:
    """``base``, or ``base<sep>2``, ``base<sep>3``... whichever is not in ``taken``; it is then taken. Rewrites
    (BN folding, the Caffe importer) add tensors that must not collide with names the model already has."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{separator}{n}"
    taken.add(name)
    return name


def graph_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name: an op's constant operand can be either."""
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            attr = next((a for a in node.attribute if a.name in ("value", "value_float")), None)
            if attr is not None:
                consts[node.output[0]] = (numpy_helper.to_array(attr.t) if attr.name == "value"
                                          else np.asarray(attr.f, np.float32))
    return consts


def clip_lower_bound(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> float | None:
    """A Clip's constant scalar minimum (the input since opset 11, the attribute before), else None."""
    lo = next((np.asarray(a.f) for a in node.attribute if a.name == "min"), None)
    if len(node.input) > 1 and node.input[1]:
        lo = consts.get(node.input[1])
    return float(np.asarray(lo).reshape(())) if lo is not None and np.size(lo) == 1 else None
