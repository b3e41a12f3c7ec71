"""``weights.json``: one sha256 per weight of the fp32 model, so a changed golden names the weights that changed.

The manifest's model sha256 says *that* the model file changed, and the layer dumps say where its tensors
first differ, which is the first *measured* tensor after the change: for a Conv fused with its Clip that is
the Clip. This file says *which* initializer changed and which nodes read it, so ``fp32-golden`` can name
the Conv whose kernel was edited.

Hashes are of the model as loaded (normalised, *not* BatchNorm-folded): folding rewrites the kernel of
every folded Conv, so folded hashes would blame the Conv for an edited BatchNorm statistic. Each hash covers
dtype, shape and the little-endian bytes. The values of ``Constant`` nodes count as weights too (a Clip bound
or a Reshape shape written as a Constant node changes the model as much as a kernel does); they are keyed by
the tensor they produce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from harness.model.graph import node_display_name

__all__ = ["WEIGHTS_FILE", "WeightChanges", "WeightRecord", "compare_weights", "weight_records", "weights_from_json",
           "weights_to_json"]

WEIGHTS_FILE = "weights.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class WeightRecord:
    """One weight: its hash and the nodes (display name, op type) of the model as given that read it."""

    name: str
    sha256: str
    dtype: str
    shape: tuple[int, ...]
    consumers: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        nodes = ", ".join(f"{node} ({op})" for node, op in self.consumers) or "no node"
        return f"{self.name!r} of node {nodes}"


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{array.dtype.str.lstrip('<>|=')}{list(array.shape)}".encode("ascii"))
    h.update(array.tobytes())
    return h.hexdigest()


def weight_records(proto: onnx.ModelProto) -> dict[str, WeightRecord]:
    """Every initializer and Constant-node value of ``proto`` (main graph), ordered by the first node that
    reads it (the graph's node order, topological in a valid model), so the first change listed is the
    earliest one; unread weights come last."""
    consumers: dict[str, list[tuple[str, str]]] = {}
    first_use: dict[str, int] = {}
    for index, node in enumerate(proto.graph.node):
        for name in dict.fromkeys(node.input):  # a node reading one tensor twice is listed once
            consumers.setdefault(name, []).append((node_display_name(node), node.op_type))
            first_use.setdefault(name, index)
    values: list[tuple[str, np.ndarray]] = [(t.name, numpy_helper.to_array(t)) for t in proto.graph.initializer]
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                         None)
            if value is not None:
                values.append((node.output[0], numpy_helper.to_array(value)))
    values.sort(key=lambda item: first_use.get(item[0], len(proto.graph.node)))
    return {name: WeightRecord(name=name, sha256=_digest(a), dtype=a.dtype.name, shape=tuple(int(d) for d in a.shape),
                               consumers=tuple(consumers.get(name, ())))
            for name, a in values}


def weights_to_json(records: Mapping[str, WeightRecord]) -> dict[str, Any]:
    return {"format_version": _FORMAT_VERSION,
            "weights": {name: {"sha256": r.sha256, "dtype": r.dtype, "shape": list(r.shape),
                               "consumers": [list(c) for c in r.consumers]} for name, r in records.items()}}


def weights_from_json(data: Mapping[str, Any]) -> dict[str, WeightRecord] | None:
    """The records of a ``weights.json``; None for a format this version does not know (treated as absent)."""
    if data.get("format_version") != _FORMAT_VERSION or not isinstance(data.get("weights"), Mapping):
        return None
    return {name: WeightRecord(name=name, sha256=str(w["sha256"]), dtype=str(w["dtype"]),
                               shape=tuple(int(d) for d in w["shape"]),
                               consumers=tuple((str(n), str(op)) for n, op in w["consumers"]))
            for name, w in data["weights"].items()}


@dataclass(frozen=True)
class WeightChanges:
    """How the current weights differ from the golden's: same name and other bytes, only now, only then."""

    changed: tuple[WeightRecord, ...]  # the current record
    added: tuple[WeightRecord, ...]
    removed: tuple[WeightRecord, ...]
    n_golden: int

    def __bool__(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def nodes(self) -> set[str]:
        """Display names of the nodes that read a changed or added weight."""
        return {node for r in (*self.changed, *self.added) for node, _ in r.consumers}

    def describe(self, *, limit: int = 3) -> str:
        parts = []
        for label, records in (("weights changed", self.changed), ("weights added", self.added),
                               ("weights removed", self.removed)):
            if records:
                shown = "; ".join(r.describe() for r in records[:limit])
                more = f" and {len(records) - limit} more" if len(records) > limit else ""
                parts.append(f"{label}: {shown}{more}")
        return "; ".join(parts) if parts else f"all {self.n_golden} weights match the golden"


def compare_weights(golden: Mapping[str, WeightRecord], current: Mapping[str, WeightRecord]) -> WeightChanges:
    """Differences in ``current``'s order (earliest reader first); removed ones in the golden's order."""
    changed = tuple(r for name, r in current.items() if name in golden and golden[name].sha256 != r.sha256)
    added = tuple(r for name, r in current.items() if name not in golden)
    removed = tuple(r for name, r in golden.items() if name not in current)
    return WeightChanges(changed=changed, added=added, removed=removed, n_golden=len(golden))
