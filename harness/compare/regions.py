"""Which nodes stand between a measured tensor and the measured tensors it is computed from.

The layerwise comparison measures the tensors of the *deployed* graph, so some tensors are never measured (a
Conv output fused with its ReLU6, shape arithmetic). Attributing a tensor's error to its inputs therefore has
to look through the unmeasured nodes: the **region** of a measured tensor ``L`` is its producer plus every
producer of an unmeasured tensor reached walking back from it; its **inputs** are the measured tensors where
that walk stops. Taking an unmeasured input as perfect (cosine 1.0) named a fused Clip as the layer that broke
when its Conv's input already sat at 0.939: the error had drifted in, and keeping the Clip in float changed
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from harness.model.graph import TensorInfo, node_display_name, topological_nodes

__all__ = ["Region", "layer_regions", "predecessor_map", "VALUE_MOVING_OPS", "WEIGHTED_OPS"]

#: Ops whose output is (a selection or rearrangement of) their input values: they add no error of their own,
#: so an error that appears at their output comes from the quantisation of what they read.
VALUE_MOVING_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Identity",
                              "Split", "Slice", "Gather", "Pad", "DepthToSpace", "SpaceToDepth", "Tile", "Expand",
                              "MaxPool", "Relu", "Clip"})
#: Ops with quantised weights: an error that appears in their region without an input quantisation to explain
#: it comes from them.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Region:
    """The nodes that compute a measured tensor from its nearest measured ancestors.

    ``nodes``: (display name, op type), the tensor's producer first. ``inputs``: the measured ancestors where
    the walk stopped. ``edges``: every (tensor, consumer node) read inside the region: where a quantisation site
    can sit. ``producers``: for every tensor read inside the region, its producer (display name, op type), when
    it has one (a graph input has none).
    """

    nodes: tuple[tuple[str, str], ...]
    inputs: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    producers: dict[str, tuple[str, str]]

    @property
    def moves_values_only(self) -> bool:
        return bool(self.nodes) and all(op in VALUE_MOVING_OPS for _, op in self.nodes)

    def weighted_node(self) -> tuple[str, str] | None:
        """The weighted node nearest the measured tensor, if any (the Conv of a fused Conv -> Clip)."""
        return next((n for n in self.nodes if n[1] in WEIGHTED_OPS), None)


def layer_regions(proto: onnx.ModelProto, tensors: Sequence[TensorInfo]) -> dict[str, Region]:
    """The region of every tensor in ``tensors`` (see the module docstring)."""
    graph = proto.graph
    measured = {t.name for t in tensors}
    constants = {i.name for i in graph.initializer}
    producer: dict[str, onnx.NodeProto] = {}
    for node in topological_nodes(graph):
        for out in node.output:
            if out:
                producer[out] = node
    out: dict[str, Region] = {}
    for t in tensors:
        start = producer.get(t.name)
        if start is None:
            out[t.name] = Region((), (), (), {})
            continue
        nodes: list[onnx.NodeProto] = []
        inputs: dict[str, None] = {}
        edges: list[tuple[str, str]] = []
        stack, seen = [start], {id(start)}
        while stack:
            node = stack.pop(0)
            nodes.append(node)
            for name in node.input:
                if not name or name in constants:
                    continue
                edges.append((name, node_display_name(node)))
                if name in measured:
                    inputs[name] = None
                elif name in producer and id(producer[name]) not in seen:
                    seen.add(id(producer[name]))
                    stack.append(producer[name])
        producers = {name: (node_display_name(producer[name]), producer[name].op_type)
                     for name, _ in edges if name in producer}
        out[t.name] = Region(tuple((node_display_name(n), n.op_type) for n in nodes), tuple(inputs),
                             tuple(dict.fromkeys(edges)), producers)
    return out


def predecessor_map(proto: onnx.ModelProto, tensors: Sequence[TensorInfo]) -> dict[str, tuple[str, ...]]:
    """For each tensor in ``tensors``, its nearest measured ancestors (through unmeasured nodes)."""
    return {name: region.inputs for name, region in layer_regions(proto, tensors).items()}


def chain_regions(tensors: Sequence[TensorInfo]) -> dict[str, Region]:
    """Regions of a plain chain (no graph given): each tensor is computed by its own node from the previous one."""
    out: dict[str, Region] = {}
    previous: TensorInfo | None = None
    for t in tensors:
        if previous is None:
            out[t.name] = Region(((t.node_name, t.op_type),), (), (), {})
        else:
            out[t.name] = Region(((t.node_name, t.op_type),), (previous.name,), ((previous.name, t.node_name),),
                                 {previous.name: (previous.node_name, previous.op_type)})
        previous = t
    return out
