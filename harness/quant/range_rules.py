"""Which calibrated range each tensor finally uses, after a toolchain's own propagation rules.

A calibration table gives every tensor its own range, but a compiler does not use them all: an op
that only moves or selects values (Reshape, Transpose, MaxPool, Relu) must produce the int8 codes
it received, so the compiler makes its output use its input's range, or the other way round. A
simulation that gave such an output its own threshold would requantise where the device does not
(and clip where the device does not: UltraFace's box-regression Transpose lost 97 % of its SQNR that
way under bm1684-int8).

``tpu-mlir`` (Sophon BM1684): the rules of tpu-mlir's TopToTpu conversion (``calibration_process``,
read from its source: facts only, re-implemented). They run in this order, each a copy of another
tensor's *current* range (not a link):

1. forward through Reshape and Permute: the output takes its input's range;
2. backward into Concat (also Min and Max): when every input is calibrated and read only by the
   Concat (or also by MaxPool), either all inputs already share one range and the output takes it,
   or every input takes the output's range, and so does the input of a Reshape/Permute that
   produced it (one level);
3. backward through Relu, MaxPool, DepthToSpace, Abs, LeakyRelu and PRelu: an input read by nothing
   else takes the output's range (LeakyRelu and PRelu keep the input's minimum; the threshold of a
   symmetric scheme is then still the output's), and so does the input of a Reshape/Permute that
   produced it;
4. forward through Relu, MaxPool, Reshape, Unsqueeze, Squeeze, Slice, Tile, Pad, Permute, Upsample,
   LeakyRelu, PRelu, Abs and (BM1684 only) AvgPool: the output takes its input's range.

``tpu-mlir`` is the BM1684 rule set; ``tpu-mlir-bm1684x`` is the same without the AvgPool rule (the
BM1684X lowering requantises an average pool to its own threshold: in tpu-mlir's MobileNetV2 graphs
the GlobalAveragePool output has the input's scale on BM1684 and its own on BM1684X).

ONNX ops map onto those as tpu-mlir's ONNX front end does: Flatten is a Reshape, Transpose a
Permute, GlobalAveragePool an AvgPool, and a Clip with minimum 0 a Relu with an upper limit (how
it imports ReLU6). The sign rule (uint8 for a tensor whose minimum is >= 0) follows the owner's range too;
it is applied by the lowering (:func:`harness.quant.lowering.device_quant`). Not modelled: MulConst (a
range scaled by the constant) and Resize (an Upsample only for integer nearest scales).
"""

from __future__ import annotations

import numpy as np
import onnx

from harness.model.graph import clip_lower_bound, graph_constants, topological_nodes
from harness.model.graph_roles import non_activations

RangeRules = str  #: one of RANGE_RULES
RANGE_RULES: tuple[str, ...] = ("none", "tpu-mlir", "tpu-mlir-bm1684x")

_STEP1_FORWARD = frozenset({"Reshape", "Flatten", "Transpose"})
_BACKWARD_THROUGH = _STEP1_FORWARD | {"DepthToSpace"}  # one level back: Reshape, Permute, Depth2Space
_STEP2_MULTI_INPUT = frozenset({"Concat", "Min", "Max"})
_STEP3_BACKWARD = frozenset({"Relu", "MaxPool", "DepthToSpace", "Abs", "LeakyRelu", "PRelu"})
_STEP4_FORWARD_BM1684X = frozenset({"Relu", "MaxPool", "Reshape", "Flatten", "Unsqueeze", "Squeeze", "Slice", "Tile",
                                    "Pad", "Transpose", "Upsample", "LeakyRelu", "PRelu", "Abs"})
_STEP4_FORWARD = _STEP4_FORWARD_BM1684X | {"AveragePool", "GlobalAveragePool"}


def range_owners(proto: onnx.ModelProto, rules: RangeRules, calibrated: set[str] | frozenset[str]) -> dict[str, str]:
    """``{tensor: tensor whose calibrated range it uses}`` for every tensor that does not use its own.

    ``calibrated``: the tensors that have a range (a float layer's outputs have none, and rules
    never route through them). Non-activations (a Resize's scales, shape arithmetic) never take
    part, even when a table read from disk has a row for them.
    """
    if rules == "none":
        return {}
    if rules not in ("tpu-mlir", "tpu-mlir-bm1684x"):
        raise ValueError(f"unknown range rules {rules!r}")
    return _tpu_mlir(proto, set(calibrated) - set(non_activations(proto)),
                     _STEP4_FORWARD if rules == "tpu-mlir" else _STEP4_FORWARD_BM1684X)


def _tpu_mlir(proto: onnx.ModelProto, calibrated: set[str], step4: frozenset[str]) -> dict[str, str]:
    graph = proto.graph
    nodes = topological_nodes(graph)
    inits = graph_constants(graph)
    producers = {out: node for node in nodes for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    owner = {name: name for name in calibrated}
    graph_outputs = {o.name for o in graph.output}

    def op_of(node: onnx.NodeProto) -> str:
        return _as_tpu_mlir_op(node, inits)

    def data_io(node: onnx.NodeProto) -> tuple[str, str] | None:
        ins = [i for i in node.input[:1] if i]
        if not ins or not node.output or ins[0] not in owner or node.output[0] not in owner:
            return None
        return ins[0], node.output[0]

    def single_use(name: str) -> bool:
        return len(readers.get(name, [])) == 1 and name not in graph_outputs

    def backward_one_level(name: str) -> None:
        producer = producers.get(name)
        if producer is not None and op_of(producer) in _BACKWARD_THROUGH:
            io = data_io(producer)
            if io is not None:
                owner[io[0]] = owner[io[1]]

    def forward(ops: frozenset[str]) -> None:
        for node in nodes:  # topological order: a chain resolves in one sweep
            io = data_io(node) if op_of(node) in ops else None
            if io is not None:
                owner[io[1]] = owner[io[0]]

    forward(_STEP1_FORWARD)
    for node in nodes:
        if op_of(node) not in _STEP2_MULTI_INPUT or not node.output or node.output[0] not in owner:
            continue
        ins = [i for i in node.input if i and i not in inits]
        if not ins or any(i not in owner for i in ins):
            continue
        if any(not single_use(i) and any(r is not node and op_of(r) != "MaxPool" for r in readers[i]) for i in ins):
            continue
        if len({owner[i] for i in ins}) == 1:
            owner[node.output[0]] = owner[ins[0]]
        else:
            for name in ins:
                owner[name] = owner[node.output[0]]
                backward_one_level(name)
    for node in reversed(nodes):  # backward: the consumer's range flows up the chain
        io = data_io(node) if op_of(node) in _STEP3_BACKWARD else None
        if io is not None and single_use(io[0]):
            owner[io[0]] = owner[io[1]]
            backward_one_level(io[0])
    forward(step4)
    return {name: root for name, root in owner.items() if root != name}


def _as_tpu_mlir_op(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> str:
    """The op tpu-mlir's ONNX front end makes of ``node``, where the rules care (Clip(0, m) -> Relu)."""
    if node.op_type == "Clip" and clip_lower_bound(node, consts) == 0.0:
        return "Relu"
    return node.op_type
