"""The ONNX graph a Caffe net is converted into, and the view of one Caffe layer its converter gets.

Every name the graph hands out is unique (Caffe names may repeat where ONNX names may not). A
layer's weights are checked the way Caffe's ``CopyTrainedLayersFrom`` checks them before any
converter uses them, so a caffemodel from another prototxt is refused with the layer's name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import helper, numpy_helper

from harness.errors import ModelConversionError
from harness.model.graph import fresh_name

Shape = tuple[int, ...]


@dataclass
class Tensor:
    """The ONNX tensor that holds a Caffe blob's current value, with Caffe's shape of it."""

    name: str
    shape: Shape


def unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base#2``, ``base#3``... whichever is free; it is then taken."""
    return fresh_name(base, taken, separator="#")


@dataclass
class Graph:
    """The ONNX graph under construction; every name it hands out is unique."""

    used: set[str]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    node_names: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        return unique(base, self.used)

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs: object) -> None:
        node_name = unique(name, self.node_names)
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=node_name, **attrs))


@dataclass
class Layer:
    """One Caffe layer as a converter sees it: parameters, input tensors, output names, weights."""

    param: Message
    bottoms: list[Tensor]
    tops: list[str]
    blobs: Sequence[Message]
    weights_source: str

    @property
    def name(self) -> str:
        return self.param.name

    def refuse(self, what: str, *, expected: str, remedy: str) -> ModelConversionError:
        what = f"Layer {self.name!r} ({self.param.type}): {what}"
        return ModelConversionError(what, expected=expected, remedy=remedy)

    def weights(self, *expected: tuple[str, Shape]) -> list[np.ndarray]:
        """The layer's blobs as float32 arrays of the ``expected`` (role, shape), checked like Caffe's
        CopyTrainedLayersFrom: same blob count, same shape (legacy 4-D shapes compared from the end)."""
        roles = ", ".join(f"{role} {list(shape)}" for role, shape in expected)
        if len(self.blobs) != len(expected):
            what = "has no weights" if not len(self.blobs) else f"has {len(self.blobs)} weight blobs"
            raise self.refuse(
                f"{what} in {self.weights_source}",
                expected=f"{len(expected)} blob(s): {roles}",
                remedy="use the caffemodel trained with this prototxt (weights are matched by layer name)",
            )
        return [self._blob(i, role, shape) for i, (role, shape) in enumerate(expected)]

    def _blob(self, index: int, role: str, shape: Shape) -> np.ndarray:
        blob = self.blobs[index]
        values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
        declared = _declared_shape(blob)
        if values.size != math.prod(shape) or not _same_blob_shape(declared, shape, legacy=not blob.HasField("shape")):
            raise self.refuse(
                f"blob {index} ({role}) has {values.size} values of shape {list(declared)} in {self.weights_source}",
                expected=f"shape {list(shape)} ({math.prod(shape)} values) from the prototxt and the input shape",
                remedy="check that the caffemodel belongs to this prototxt (num_output, kernel, input channels)",
            )
        return values.reshape(shape)


def _declared_shape(blob: Message) -> Shape:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def _same_blob_shape(declared: Shape, expected: Shape, *, legacy: bool) -> bool:
    """Blob::ShapeEquals: a legacy (num, channels, height, width) shape is the expected one padded
    in front with 1s (an InnerProduct weight is stored as 1 x 1 x N x K); a current shape is exact."""
    if legacy and len(expected) <= 4:
        expected = (1,) * (4 - len(expected)) + tuple(expected)
    return declared == tuple(expected)


def canonical_axis(layer: Layer, axis: int, rank: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: negative counts from the end."""
    if not -rank <= axis < rank:
        raise layer.refuse(
            f"{what} {axis} is out of range for an input of rank {rank}",
            expected=f"{what} in [{-rank}, {rank - 1}]",
            remedy="fix the layer parameter",
        )
    return axis % rank


def weight_inputs(g: Graph, layer: Layer, weight_shape: Shape, n_outputs: int, *, bias_term: bool) -> list[str]:
    """The layer's weights (and, with ``bias_term``, one bias per output), checked by ``Layer.weights``
    and added as the initializers ``<layer>/weights`` and ``<layer>/bias``."""
    expected = [("weights", weight_shape)] + ([("bias", (n_outputs,))] if bias_term else [])
    blobs = layer.weights(*expected)
    return [g.constant(f"{layer.name}/{role}", blob) for (role, _), blob in zip(expected, blobs)]

