"""Which nodes of the model as given make up one compared layer, for naming where the fp32 model changed.

The compared layers are tensors of the BN-folded graph with activation producers fused away
(:mod:`harness.engine.layers`): the tensor after ``Conv -> BatchNormalization -> Clip`` is one layer, produced
by the Clip, while the Conv's and the BatchNorm's outputs are not measured. So when a Conv kernel changes, the
first differing tensor is the Clip's. Walking back from that tensor, through tensors that are not measured,
to the measured ones (or the graph inputs) gives every original node folded or fused into the layer; the
nodes among them that read a changed weight are the ones to name.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import onnx

from harness.model.graph import node_display_name


@dataclass(frozen=True)
class LayerNodes:
    """The original nodes (display name, op type) behind one compared tensor, in graph order; Constant nodes
    (a Clip's bounds) are left out of :meth:`describe` but count for weight changes."""

    tensor: str
    nodes: tuple[tuple[str, str], ...]

    @property
    def compute(self) -> tuple[tuple[str, str], ...]:
        return tuple(n for n in self.nodes if n[1] != "Constant")

    def describe(self) -> str:
        """``Conv /a/Conv + BatchNormalization /a/BN + Clip /a/Clip``; empty for a one-node layer."""
        compute = self.compute
        if len(compute) <= 1:
            return ""
        return " + ".join(f"{op} {name}" for name, op in compute)

    def changed(self, changed_nodes: Collection[str]) -> tuple[tuple[str, str], ...]:
        return tuple(n for n in self.nodes if n[0] in changed_nodes)


def layer_nodes(proto: onnx.ModelProto, tensor: str, measured: Collection[str]) -> LayerNodes:
    """The nodes of ``proto`` (the model as given) that compute ``tensor`` from measured tensors, graph inputs
    and weights: everything a deployment folds or fuses into that layer."""
    graph = proto.graph
    nodes = list(graph.node)
    producers = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    stop = set(measured) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    found: set[int] = set()
    pending = [tensor]
    while pending:
        index = producers.get(pending.pop())
        if index is None or index in found:
            continue
        found.add(index)
        pending += [i for i in nodes[index].input if i and i not in stop]
    ordered = [nodes[i] for i in sorted(found)]
    return LayerNodes(tensor, tuple((node_display_name(n), n.op_type) for n in ordered))
