"""tpu-mlir's view of an ONNX graph: its tensor names, its fused "top" graph, and its lowered graphs.

Why: tpu-mlir's calibration table and its tensor dumps name tensors its own way, and hold only the
tensors of its *fused* top graph. To read its table, to quantise exactly the tensors it quantises
and to compare with its outputs, the harness maps those names onto the ONNX tensors.

Facts (tpu-mlir 1.30, read from its source and checked on its MobileNetV2 outputs; re-implemented):

* Names: an op is named after its ONNX output tensor plus ``_`` and the ONNX op type
  (``/features/features.2/conv/conv.2/Conv_output_0_Conv``, ``/Flatten_output_0_Flatten``,
  ``logits_Gemm``); a graph input keeps its own name.
* ReLU fusion (its ``TopFuseRelu`` canonicalisation): a Relu, or a Clip whose minimum is 0 (how its
  ONNX front end imports ReLU6), whose input only it reads and is produced by an op that can apply
  a ReLU itself (Conv, Gemm/MatMul, Add) is folded into that op, which takes the activation's
  name. The pre-activation tensor has no row in the table and no dump; its one output is the
  activation's.
* 1x1 merge (``Conv1x1Convkxk2dMerge``): a 1x1 Conv (group 1, no padding) whose output only a
  following Conv (group 1, no padding) reads is multiplied into that Conv: ``W = W2 . W1`` over the
  middle channels, ``b = b2 + W2 . b1``; the middle tensor disappears. Not when the merged weight
  would be more than 20 times the two weights together. tpu-mlir checks neither stride; we require
  stride 1 on the 1x1 Conv, where the merge is exact (elsewhere it would change the output shape).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from harness.errors import TableError
from harness.model.graph import TensorInfo, clip_lower_bound, graph_constants, tensor_list, topological_nodes

#: Ops that take a following ReLU into themselves (``do_relu``), as far as the BM1684 lowering goes.
FUSE_RELU_OPS = frozenset({"Conv", "Gemm", "MatMul", "Add"})
_MERGE_RATIO_MAX = 20.0


def node_attr(node: onnx.NodeProto, name: str, default):
    """An attribute's value, or ``default`` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class MergedConv:
    """A 1x1 Conv (``first``, output ``middle``) multiplied into the Conv ``second`` reads it with."""

    first: onnx.NodeProto
    second: onnx.NodeProto

    @property
    def middle(self) -> str:
        return self.first.output[0]

    def merged_weights(self, inits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the merged Conv in float32, summed over the middle channels as tpu-mlir does."""
        w2 = inits[self.second.input[1]].astype(np.float32)
        w1 = inits[self.first.input[1]].astype(np.float32)[:, :, 0, 0]
        b2 = _bias(self.second, inits, w2.shape[0])
        b1 = _bias(self.first, inits, w1.shape[0])
        weight = np.einsum("edkl,dc->eckl", w2, w1).astype(np.float32)
        bias = (b2 + np.einsum("edkl,d->e", w2, b1)).astype(np.float32)
        return weight, bias


def _bias(node: onnx.NodeProto, inits: dict[str, np.ndarray], channels: int) -> np.ndarray:
    if len(node.input) > 2 and node.input[2]:
        return inits[node.input[2]].astype(np.float32).reshape(-1)
    return np.zeros(channels, np.float32)


@dataclass
class TopGraph:
    """tpu-mlir's fused top graph of an ONNX model (normally BN-folded, as tpu-mlir folds BN too)."""

    proto: onnx.ModelProto
    _producers: dict[str, onnx.NodeProto] = field(init=False, repr=False)
    _readers: dict[str, list[onnx.NodeProto]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.nodes = topological_nodes(self.proto.graph)
        self.consts = graph_constants(self.proto.graph)
        self._producers = {out: n for n in self.nodes for out in n.output}
        self._readers = {}
        for n in self.nodes:
            for name in n.input:
                self._readers.setdefault(name, []).append(n)
        self._outputs = {o.name for o in self.proto.graph.output}

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return self._producers.get(tensor)

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return self._readers.get(tensor, [])

    def _only_reader(self, tensor: str) -> onnx.NodeProto | None:
        readers = self.readers(tensor)
        return readers[0] if len(readers) == 1 and tensor not in self._outputs else None

    def is_relu(self, node: onnx.NodeProto) -> bool:
        """A Relu, or a Clip with minimum 0 (tpu-mlir's ReLU with an upper limit)."""
        return node.op_type == "Relu" or (node.op_type == "Clip" and clip_lower_bound(node, self.consts) == 0.0)

    @cached_property
    def fused_relu(self) -> dict[str, onnx.NodeProto]:
        """``{pre-activation tensor: the Relu/Clip folded into its producer}``."""
        out = {}
        for node in self.nodes:
            if node.op_type not in FUSE_RELU_OPS or not node.output:
                continue
            reader = self._only_reader(node.output[0])
            if reader is not None and self.is_relu(reader):
                out[node.output[0]] = reader
        return out

    @cached_property
    def merged(self) -> dict[str, MergedConv]:
        """``{output of the second Conv: MergedConv}``. A chain of three 1x1 Convs is left unmerged (tpu-mlir would
        merge it step by step; not modelled)."""
        inits = {t.name: numpy_helper.to_array(t) for t in self.proto.graph.initializer}
        out = {}
        for node in self.nodes:
            if node.op_type != "Conv" or node.input[1] not in inits:
                continue
            first = self.producer(node.input[0])
            if first is None or first.op_type != "Conv" or first.input[1] not in inits:
                continue
            if self._only_reader(first.output[0]) is not node or not self._mergeable(first, node, inits):
                continue
            out[node.output[0]] = MergedConv(first=first, second=node)
        return {k: m for k, m in out.items() if m.first.output[0] not in out and k not in
                {n.first.output[0] for n in out.values()}}

    def _mergeable(self, first: onnx.NodeProto, second: onnx.NodeProto, inits: dict[str, np.ndarray]) -> bool:
        w1, w2 = inits[first.input[1]], inits[second.input[1]]
        if w1.ndim != 4 or w2.ndim != 4 or tuple(w1.shape[2:]) != (1, 1):
            return False
        for node in (first, second):
            auto_pad = node_attr(node, "auto_pad", b"NOTSET")
            if node_attr(node, "group", 1) != 1 or any(node_attr(node, "pads", [0])) or auto_pad not in (b"NOTSET", b"VALID"):
                return False
        if any(s != 1 for s in node_attr(first, "strides", [1, 1])):
            return False
        e, d, k1, k2 = w2.shape
        c = w1.shape[1]
        return (e * c * k1 * k2) / (e * d * k1 * k2 + c * d) <= _MERGE_RATIO_MAX

    @cached_property
    def merged_away(self) -> frozenset[str]:
        """Middle tensors of merged 1x1 Convs: not in tpu-mlir's graph at all."""
        return frozenset(m.middle for m in self.merged.values())

    @cached_property
    def _infos(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in tensor_list(self.proto, include_inputs=True)}

    @cached_property
    def tensors(self) -> list[str]:
        """Float tensors of the top graph (graph inputs first, then in topological order)."""
        gone = set(self.fused_relu) | self.merged_away
        return [name for name in self._infos if name not in gone]

    def shape(self, tensor: str) -> tuple[int | str | None, ...] | None:
        info = self._infos.get(tensor)
        return info.shape if info is not None else None

    def tpu_name(self, tensor: str) -> str:
        producer = self.producer(tensor)
        return tensor if producer is None else f"{tensor}_{producer.op_type}"

    @cached_property
    def names(self) -> dict[str, str]:
        """``{tpu-mlir name: ONNX tensor}`` for every tensor of the top graph."""
        return {self.tpu_name(t): t for t in self.tensors}

    def onnx_tensor(self, name: str) -> str | None:
        """The ONNX tensor a tpu-mlir name means: the exact tensor, else the suffix-stripped one when the suffix is
        its producer's op type (any ONNX tensor, so a row of a fused or merged tensor still resolves)."""
        if name in self.names:
            return self.names[name]
        if name in self._producers or name in {i.name for i in self.proto.graph.input}:
            return name
        stem, sep, op_type = name.rpartition("_")
        producer = self._producers.get(stem) if sep else None
        return stem if producer is not None and producer.op_type == op_type else None


# --- lowered TPU-dialect graphs (the text tpu-mlir's model_deploy --debug keeps) ---------------------
_OP = re.compile(r'^\s*%\w+ = "(?P<dialect>tpu|top)\.(?P<op>\w+)"\((?P<args>[^)]*)\)\s*(?P<attrs>\{.*\})?\s*:'
                 r'\s*\((?P<ins>.*)\)\s*->\s*(?P<out>.*?)\s*loc\(#(?P<loc>loc\d+)\)\s*$')
_LOC = re.compile(r'^#(loc\d+) = loc\("([^"]*)"\)', re.M)
_UNIFORM = re.compile(r"quant\.uniform<(?P<storage>[iu]\d+):f32, (?P<scale>[-+0-9.eE]+)>")
_INT_LIST = ("rshift", "rshifts", "multiplier", "multipliers")


@dataclass(frozen=True)
class LoweredOp:
    """One op of a lowered graph: its name, type, output storage (``i8``/``u8``/None) and scale, and the
    integer attributes that define its arithmetic (``rshift`` ... as lists; scalars become 1-element lists)."""

    name: str
    op: str
    storage: str | None
    scale: float | None
    ints: dict[str, list[int]]
    attrs: str

    def flag(self, key: str) -> str | None:
        m = re.search(rf"\b{key} = ([^,}}]+)", self.attrs)
        return m.group(1).strip() if m else None


def read_lowered_graph(path: str | Path) -> dict[str, LoweredOp]:
    """The ``tpu.*`` ops of a lowered ``*_tpu.mlir`` file by name (weights and top.None left out)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"Could not read the lowered graph {p} ({exc})", expected="a tpu-mlir *_tpu.mlir text file",
                         remedy="pass the file model_deploy --debug wrote") from None
    locs = dict(_LOC.findall(text))
    ops: dict[str, LoweredOp] = {}
    for line in text.splitlines():
        m = _OP.match(line)
        if not m or m["dialect"] != "tpu" or m["loc"] not in locs:
            continue
        attrs = m["attrs"] or ""
        ints: dict[str, list[int]] = {}
        for key in _INT_LIST:
            listed = re.search(rf"\b{key} = \[([^\]]*)\]", attrs)
            scalar = re.search(rf"\b{key} = (-?\d+) : si32", attrs)
            if listed:
                ints[key] = [int(v) for v in listed.group(1).split(",") if v.strip()]
            elif scalar:
                ints[key] = [int(scalar.group(1))]
        uniform = _UNIFORM.search(m["out"])
        ops[locs[m["loc"]]] = LoweredOp(name=locs[m["loc"]], op=m["op"], storage=uniform["storage"] if uniform else None,
                                        scale=float(uniform["scale"]) if uniform else None, ints=ints, attrs=attrs)
    if not ops:
        raise TableError(f"{p} holds no tpu.* ops", expected="a lowered graph (module.state TPU_LOWERED)",
                         remedy="pass the *_tpu.mlir file, not the top-dialect one")
    return ops
