"""Write the quantised model as ONNX (QDQ), and run it as a float simulation or with int8 kernels.

The QDQ model is the simulator: every quantised tensor passes through QuantizeLinear ->
DequantizeLinear (or an equivalent fake-quant subgraph), so onnxruntime computes in float exactly
what the integer pipeline would see. Two execution modes run the *same* file:

* ``simulate``: graph optimisations off. Every Q/DQ executes as written: the reference. Only the
  constant weight DequantizeLinear nodes of Conv/ConvTranspose are computed once instead of on
  every run (:func:`simulation_proto`; bit-identical). Build its sessions with
  :func:`mode_session` / :func:`mode_runner`.
* ``int8-kernels``: optimisations on. onnxruntime fuses DQ -> Conv -> Q into QLinearConv and
  friends and computes in integers, as a runtime on the device would. Where it cannot fuse, it
  falls back to float. ``compare_modes`` reports per tensor how far the modes disagree, in units of
  that tensor's quantisation step.

How each scheme is written:

* 8-bit uniform activations: a QuantizeLinear/DequantizeLinear pair (int8 or uint8) where that is
  exact. ONNX rounds half to even and saturates int8 at -128, so a ``half_away`` scheme (ncnn) or a
  narrow signed range ([-127, 127]: ncnn, Sophon) is written as a float subgraph instead when
  ``exact_rounding`` is true, so ties and the clamp are the device's. With ``exact_rounding=False``
  they are written as Q/DQ (ties to even, -128 reachable) so onnxruntime can fuse them into int8
  kernels; the two differ only on exact ties and on values below -127.5 steps. The subgraph skips
  steps that cannot change a bit (see ``_Writer._uniform_fake_quant``): on MobileNetV2 (ncnn)
  the simulation ran 1.6x faster for it, with byte-identical outputs.
* 8-bit uniform weights: the integer codes are stored as an int8/uint8 initializer (quantised in
  numpy with the scheme's own rounding, so any rounding is exact) feeding a DequantizeLinear.
* 16-bit uniform and log2 (NNIE) tensors: a fake-quant subgraph of standard float ops (Div, Round,
  Clip, Mul; or Abs, Log, Round, Pow, Where for log2), because int16 Q/DQ needs opset 21 and a log
  grid has no Q/DQ at all. Their weights are stored already fake-quantised.
* Biases of quantised Conv/Gemm, when the plan asks (onnxruntime, TFLite): int32 codes with scale
  ``s_input * s_weight`` and a DequantizeLinear, as onnxruntime's quantiser writes them.

Graph outputs stay float and keep their names. A tensor ``T`` quantised for all consumers is
followed by ``T__q`` (codes, uniform 8-bit only) and ``T__dq`` (dequantised values); ``T`` itself is
still the float value before quantisation, so it lines up with the fp32 model's ``T``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from harness.errors import ConfigError
from harness.model.graph import clip_lower_bound, graph_constants, node_display_name
from harness.model.runner import TapRunner, TapSelection
from harness.model.session import BuiltModel, make_session
from harness.quant.lowered_qdq import LoweredOpsWriter, lowered_nodes, lowered_result_names
from harness.quant.plan import ALL_CONSUMERS, QuantPlan, TensorQuant
from harness.quant.scheme import QuantScheme, fake_quant, quantize

Mode = Literal["simulate", "int8-kernels"]
MODE_OPTIMIZATION = {"simulate": "disabled", "int8-kernels": "all"}

#: Op types whose input 1 is a weight and (input 2) a bias, and the weight's output-channel axis.
WEIGHT_OPS = {"Conv": 0, "ConvTranspose": 1, "Gemm": None, "MatMul": -1}

_Q_SUFFIX, _DQ_SUFFIX, _FQ_SUFFIX = "__q", "__dq", "__fq"
#: How errors name a QDQ model when the caller does not say more (profile, origin).
QDQ_SOURCE = BuiltModel(what="the int8 simulation (QDQ) model")


@dataclass(frozen=True)
class QdqModel:
    """The written model and, per quantised activation, where its codes and values can be tapped."""

    proto: onnx.ModelProto
    #: tensor name -> name of its uint8/int8 code tensor (Q output), for 8-bit Q/DQ sites.
    code_tensors: dict[str, str]
    #: tensor name -> name of its dequantised tensor as the consumers read it.
    dequantized_tensors: dict[str, str]
    #: (tensor, consumer) -> the dequantised tensor that consumer reads, for every activation site (a
    #: tensor quantised per consumer has no entry in ``dequantized_tensors``).
    edge_dequantized: dict[tuple[str, str], str] = field(default_factory=dict)


def write_qdq_model(proto: onnx.ModelProto, plan: QuantPlan, *, exact_rounding: bool = True) -> QdqModel:
    """A copy of ``proto`` (BN already folded) with the plan's quantisation inserted."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    writer = _Writer(graph, exact_rounding=exact_rounding)
    inits = {t.name: t for t in graph.initializer}
    for name, tq in plan.weights.items():
        if name not in inits:
            raise ConfigError(
                f"The plan quantises weight {name!r}, which is not an initializer of the model",
                expected="weights named as in the BN-folded model",
                remedy="rebuild the plan from the same folded model (fold_batchnorm) it is applied to",
            )
    weight_dq = {name: writer.weight(inits[name], tq) for name, tq in plan.weights.items()}

    # Activation sites: one quantiser per (tensor, quantisation); consumers are re-pointed to it. The
    # tensors lowered ops write get their value from the op's integer arithmetic instead.
    lowered_results = lowered_result_names(plan)
    edge_inputs: dict[tuple[str, str], str] = {(t, ALL_CONSUMERS): dq for t, dq in lowered_results.items()}
    writer.dequantized.update(lowered_results)
    by_tensor: dict[str, list[tuple[str, TensorQuant]]] = {}
    for (tensor, consumer), tq in plan.activations.items():
        if tensor in lowered_results and consumer == ALL_CONSUMERS:
            writer.activation_quant.setdefault(tensor, tq)
            continue
        by_tensor.setdefault(tensor, []).append((consumer, tq))
    for tensor in sorted(by_tensor, key=lambda t: _order_key(t, graph)):
        for consumer, tq in sorted(by_tensor[tensor], key=lambda item: item[0] != ALL_CONSUMERS):
            suffix = "" if consumer == ALL_CONSUMERS else f"__{consumer}"
            edge_inputs[(tensor, consumer)] = writer.activation(tensor, tq, tag=suffix)

    replaced = lowered_nodes(graph, plan)
    for display, node in replaced.items():
        writer.write_lowered(plan.lowered[display], node, plan,
                             lambda t, c: edge_inputs.get((t, c)) or edge_inputs.get((t, ALL_CONSUMERS)) or t)
    for node in list(graph.node):
        if node.name.startswith(_Writer.PREFIX):
            continue
        display = node_display_name(node)
        if display in replaced:
            graph.node.remove(node)
            continue
        original_inputs = list(node.input)
        for i, name in enumerate(node.input):
            replacement = edge_inputs.get((name, display)) or edge_inputs.get((name, ALL_CONSUMERS))
            if replacement:
                node.input[i] = replacement
            elif name in weight_dq:
                node.input[i] = weight_dq[name]
        if plan.quantize_bias and node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2:
            writer.maybe_bias(node, display, plan, inits, original_inputs=original_inputs)
    writer.finish(model)
    return QdqModel(model, writer.code_tensors, writer.dequantized, dict(edge_inputs))


def _order_key(tensor: str, graph: onnx.GraphProto) -> int:
    for i, node in enumerate(graph.node):
        if tensor in node.output:
            return i + 1
    return 0  # graph inputs first


class _Writer(LoweredOpsWriter):
    """Appends Q/DQ nodes and fake-quant subgraphs (and lowered ops, see :mod:`harness.quant.lowered_qdq`);
    names everything it adds with a fixed prefix."""

    PREFIX = "qh__"

    def __init__(self, graph: onnx.GraphProto, *, exact_rounding: bool) -> None:
        self.graph = graph
        self.exact_rounding = exact_rounding
        self.new_nodes: list[onnx.NodeProto] = []
        self.code_tensors: dict[str, str] = {}
        self.dequantized: dict[str, str] = {}
        self.weight_quant: dict[str, TensorQuant] = {}
        self.activation_quant: dict[str, TensorQuant] = {}
        self._consts: dict[tuple, str] = {}
        self.nonnegative = _nonnegative_tensors(graph)

    # -- weights ------------------------------------------------------------------------------
    def weight(self, init: onnx.TensorProto, tq: TensorQuant) -> str:
        w = numpy_helper.to_array(init)
        scheme = tq.scheme
        self.weight_quant[init.name] = tq
        if _qdq_expressible(scheme):
            codes = quantize(w, scheme, tq.scale, tq.zero_point)
            q_name = self._init(codes, init.name + _Q_SUFFIX)
            out = init.name + _DQ_SUFFIX
            self._dq(q_name, tq, out, axis=_axis(scheme, w.ndim))
            return out
        return self._init(fake_quant(w.astype(np.float32), scheme, tq.scale, tq.zero_point), init.name + _FQ_SUFFIX)

    def maybe_bias(self, node, display, plan: QuantPlan, inits, *, original_inputs: list[str]) -> None:
        """int32 bias with scale s_x * s_w when both the input and the weight are 8-bit uniform."""
        bias_name = node.input[2]
        if not bias_name or bias_name not in inits:
            return
        x_quant = plan.activation_for(original_inputs[0], display)
        w_quant = self.weight_quant.get(original_inputs[1])
        if x_quant is None or w_quant is None or not (_qdq_expressible(x_quant.scheme) and _qdq_expressible(w_quant.scheme)):
            return
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64)
        scale = (np.asarray(x_quant.scale, np.float32) * np.asarray(w_quant.scale, np.float32)).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape) if scale.size > 1 else scale.reshape(())
        codes = np.clip(np.rint(bias / scale.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        q_name = self._init(codes, f"{bias_name}__{display}{_Q_SUFFIX}")
        out = f"{bias_name}__{display}{_DQ_SUFFIX}"
        inputs = [q_name, self._const(scale.astype(np.float32), "bias_scale")]
        attrs = {"axis": 0} if scale.ndim == 1 else {}
        self._node("DequantizeLinear", inputs, [out], **attrs)
        node.input[2] = out

    # -- activations ----------------------------------------------------------------------------
    def activation(self, tensor: str, tq: TensorQuant, *, tag: str) -> str:
        scheme = tq.scheme
        self.activation_quant.setdefault(tensor, tq)
        out = f"{tensor}{tag}{_DQ_SUFFIX}"
        if _qdq_expressible(scheme) and (_qdq_exact(scheme) or not self.exact_rounding):
            codes = f"{tensor}{tag}{_Q_SUFFIX}"
            axis = {"axis": scheme.axis} if scheme.granularity == "per_channel" else {}
            self._node("QuantizeLinear", [tensor, self._scale(tq), self._zero_point(tq)], [codes], **axis)
            self._dq(codes, tq, out, axis=scheme.axis if scheme.granularity == "per_channel" else None)
            if not tag:
                self.code_tensors[tensor] = codes
        elif scheme.domain == "log2":
            self._log2_fake_quant(tensor, tq, out)
        else:
            self._uniform_fake_quant(tensor, tq, out, nonnegative=tensor in self.nonnegative)
        if not tag:
            self.dequantized[tensor] = out
        return out

    def _uniform_fake_quant(self, x: str, tq: TensorQuant, out: str, *, nonnegative: bool = False) -> None:
        """``(clip(round(x / s) + z) - z) * s`` in float ops, with the scheme's rounding.

        The simulation is bound by these elementwise passes, so ops that cannot change a bit are
        not written: ``- z`` when z is 0 (``q - 0.0 == q`` for every float, -0.0 included), and
        ``+ z`` when z is 0 and the rounded value cannot be -0.0 (turning -0.0 into +0.0 is all it
        does). For a tensor that cannot be negative (``nonnegative``: a Relu or Clip(min >= 0)
        output), half-away rounding is ``floor(v + 0.5)`` (see :meth:`_round`).
        """
        s = self._scale(tq)
        zero_z = not np.any(np.asarray(tq.zero_point))
        z = None if zero_z else self._const(np.asarray(tq.zero_point, np.float32), "zp_f")
        r = self._round(self._tmp("Div", [x, s]), tq.scheme.rounding, nonnegative=nonnegative)
        # Floor(v + 0.5) never returns -0.0 (-0.5 + 0.5 is +0.0), so half-up needs no "+ 0" either
        rounding = tq.scheme.rounding
        may_be_negative_zero = rounding == "half_even" or (rounding == "half_away" and not nonnegative)
        if z is not None or may_be_negative_zero:
            r = self._tmp("Add", [r, z or self._f(0.0)])
        q = self._tmp("Clip", [r, self._f(tq.scheme.qmin), self._f(tq.scheme.qmax)])
        self._node("Mul", [q if z is None else self._tmp("Sub", [q, z]), s], [out])

    def _log2_fake_quant(self, x: str, tq: TensorQuant, out: str) -> None:
        """NNIE log code: magnitude rounded on a log2 grid with L levels per octave, sign kept."""
        scheme = tq.scheme
        levels = float(scheme.levels_per_octave)
        z = float(np.asarray(tq.zero_point).reshape(()))
        smallest = 2.0 ** (z / levels)
        mag = self._tmp("Abs", [x])
        safe = self._tmp("Max", [mag, self._f(np.finfo(np.float32).tiny)])
        log2 = self._tmp("Mul", [self._tmp("Log", [safe]), self._f(levels / math.log(2.0))])
        code = self._tmp("Clip", [self._tmp("Sub", [self._round(log2, scheme.rounding), self._f(z)]), self._f(0.0), self._f(scheme.qmax)])
        value = self._tmp("Pow", [self._f(2.0), self._tmp("Div", [self._tmp("Add", [code, self._f(z)]), self._f(levels)])])
        signed = self._tmp("Mul", [self._tmp("Sign", [x]), value])
        flush = self._tmp("Less", [mag, self._f(smallest / 2.0)])
        self._node("Where", [flush, self._f(0.0), signed], [out])

    def _round(self, v: str, rounding: str, *, nonnegative: bool = False) -> str:
        if rounding == "half_even":
            return self._tmp("Round", [v])
        if rounding == "half_up":
            return self._tmp("Floor", [self._tmp("Add", [v, self._f(0.5)])])
        if nonnegative:
            # v >= 0 or -0.0: sign(v) * floor(|v| + 0.5) is floor(v + 0.5), bit for bit (for -0.0
            # both give +0.0), and never -0.0
            return self._tmp("Floor", [self._tmp("Add", [v, self._f(0.5)])])
        # half away from zero: sign(v) * floor(|v| + 0.5)
        floor = self._tmp("Floor", [self._tmp("Add", [self._tmp("Abs", [v]), self._f(0.5)])])
        return self._tmp("Mul", [self._tmp("Sign", [v]), floor])

    # -- primitives -----------------------------------------------------------------------------
    def _dq(self, codes: str, tq: TensorQuant, out: str, *, axis: int | None) -> None:
        attrs = {"axis": axis} if axis is not None and np.asarray(tq.scale).ndim == 1 else {}
        self._node("DequantizeLinear", [codes, self._scale(tq), self._zero_point(tq)], [out], **attrs)

    def _scale(self, tq: TensorQuant) -> str:
        return self._const(np.asarray(tq.scale, np.float32), "scale")

    def _zero_point(self, tq: TensorQuant) -> str:
        return self._const(np.asarray(tq.zero_point).astype(tq.scheme.code_dtype), "zp")

    def _f(self, value: float) -> str:
        return self._const(np.asarray(value, np.float32), "c")

    def _const(self, array: np.ndarray, kind: str) -> str:
        key = (kind, array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = f"{self.PREFIX}{kind}_{len(self._consts)}"
            self.graph.initializer.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def _init(self, array: np.ndarray, name: str) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def _tmp(self, op: str, inputs: list[str]) -> str:
        out = f"{self.PREFIX}t{len(self.new_nodes)}"
        self._node(op, inputs, [out])
        return out

    def _node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.new_nodes.append(helper.make_node(op, inputs, outputs, name=f"{self.PREFIX}{op}_{len(self.new_nodes)}", **attrs))

    def finish(self, model: onnx.ModelProto) -> None:
        """Insert the new nodes and restore topological order (ONNX requires it)."""
        from harness.model.graph import topological_nodes

        self.graph.node.extend(self.new_nodes)
        ordered = topological_nodes(self.graph)
        copies = [onnx.NodeProto() for _ in ordered]
        for copy, node in zip(copies, ordered):
            copy.CopyFrom(node)
        del self.graph.node[:]
        self.graph.node.extend(copies)
        used = {n for node in self.graph.node for n in node.input}
        kept = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        del self.graph.value_info[:]  # stale after rewiring; shape inference re-derives it
        model.CopyFrom(onnx.shape_inference.infer_shapes(model, strict_mode=False))


def _qdq_expressible(scheme: QuantScheme) -> bool:
    """Can standard (opset 13) Q/DQ represent this scheme exactly?"""
    return scheme.domain == "uniform" and scheme.bits == 8


def _qdq_exact(scheme: QuantScheme) -> bool:
    """Does QuantizeLinear round and clamp exactly as the scheme says (ties to even, full range)?"""
    return scheme.rounding == "half_even" and not (scheme.signed and scheme.narrow_range)


def _axis(scheme: QuantScheme, ndim: int) -> int | None:
    if scheme.granularity != "per_channel":
        return None
    return scheme.axis % ndim


def _nonnegative_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors that cannot hold a negative value (-0.0 aside): outputs of Relu, and of Clip with a
    constant lower bound >= 0 (an initializer, a Constant node or, before opset 11, the attribute)."""
    consts = graph_constants(graph)
    out: set[str] = set()
    for node in graph.node:
        if node.op_type == "Relu":
            out.add(node.output[0])
        elif node.op_type == "Clip":
            lo = clip_lower_bound(node, consts)
            if lo is not None and lo >= 0:
                out.add(node.output[0])
    return out


# --- sessions for the two modes -----------------------------------------------------------------
#: Ops whose weight input reads the same whether it is a constant or computed at run time (they do
#: not prepack it; checked against onnxruntime 1.32 in the tests). Gemm and MatMul prepack a
#: constant weight into another layout and then round differently, so theirs stay DequantizeLinear.
_FOLDABLE_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose"})


def simulation_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with constant weight/bias DequantizeLinear nodes replaced by their float results.

    The simulate mode runs with graph optimisations off, which also keeps onnxruntime from folding
    those nodes: every run dequantised every weight again. Folded, MobileNetV2 simulated 10 %
    (ncnn-int8) to 20 % (ort-qdq) faster on a quiet machine, and no faster while other processes
    loaded the memory bus (the float weights are 4x the bytes of the int8 codes). The float values
    are computed once, *by onnxruntime's own DequantizeLinear*, so the model computes exactly what
    the written one does, bit for bit. Only nodes read solely by :data:`_FOLDABLE_WEIGHT_OPS` are
    folded.
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(proto)
    nodes = _foldable_dequantize_nodes(proto.graph)
    if not nodes:
        return folded
    values = _run_constant_nodes(proto, nodes)
    graph = folded.graph
    _replace_repeated(graph.node, [n for n in graph.node if n.op_type != "DequantizeLinear" or n.output[0] not in values])
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in values.items())
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    _replace_repeated(graph.initializer, [t for t in graph.initializer if t.name in used])
    _replace_repeated(graph.value_info, [v for v in graph.value_info if v.name not in values])
    return folded


def _foldable_dequantize_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """DequantizeLinear nodes with constant inputs whose output only weight-folding-safe ops read."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)

    def foldable(node: onnx.NodeProto) -> bool:
        read_by = readers.get(node.output[0], set())
        return (node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx")
                and all(i in inits for i in node.input if i) and node.output[0] not in outputs
                and bool(read_by) and read_by <= _FOLDABLE_WEIGHT_OPS)

    return [n for n in graph.node if foldable(n)]


def _replace_repeated(field, items: list) -> None:
    """Replace the contents of a protobuf repeated field (slice assignment is not supported)."""
    del field[:]
    field.extend(items)


def _run_constant_nodes(proto: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> dict[str, np.ndarray]:
    """Outputs of ``nodes`` (inputs all initializers), computed by onnxruntime with optimisations off."""
    needed = {i for n in nodes for i in n.input if i}
    graph = helper.make_graph(
        nodes, "constants", inputs=[], outputs=[helper.make_empty_tensor_value_info(n.output[0]) for n in nodes],
        initializer=[t for t in proto.graph.initializer if t.name in needed])
    model = helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    names = [n.output[0] for n in nodes]
    session = make_session(model.SerializeToString(), threads=1, optimization="disabled", source=dataclasses.replace(QDQ_SOURCE, what="the weight DequantizeLinear nodes of the QDQ model"))
    return dict(zip(names, session.run(names, {})))


def _mode_proto(qdq: QdqModel | onnx.ModelProto, mode: Mode, *, keep: Iterable[str] | None = ()) -> onnx.ModelProto:
    """The proto ``mode`` runs; nodes that neither the graph outputs nor ``keep`` need are dropped (``keep=None``:
    all kept). onnxruntime runs dead nodes too: a lowered model keeps each fused Conv's float output and its
    float ReLU only so that they can be tapped, which cost a third of MobileNetV2's simulation time."""
    proto = qdq.proto if isinstance(qdq, QdqModel) else qdq
    proto = simulation_proto(proto) if mode == "simulate" else proto
    return proto if keep is None else _live(proto, set(keep))


def _live(proto: onnx.ModelProto, keep: set[str]) -> onnx.ModelProto:
    needed = keep | {o.name for o in proto.graph.output}
    live: list[onnx.NodeProto] = []
    for node in reversed(proto.graph.node):  # topological order: every reader comes after its producer
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    if len(live) == len(proto.graph.node):
        return proto
    pruned = onnx.ModelProto()
    pruned.CopyFrom(proto)
    _replace_repeated(pruned.graph.node, list(reversed(live)))
    _replace_repeated(pruned.graph.initializer, [t for t in pruned.graph.initializer if t.name in needed])
    return pruned


def mode_session(qdq: QdqModel | onnx.ModelProto, mode: Mode, *, threads: int | None = None,
                 source: BuiltModel | None = None) -> ort.InferenceSession:
    """An onnxruntime session running ``qdq`` in ``mode``, set up as that mode is defined.

    ``simulate``: :func:`simulation_proto` with graph optimisations off; ``int8-kernels``: the
    written model with every optimisation on (onnxruntime fuses Q/DQ into int8 kernels).
    ``source``: how errors name the model (its profile and origin), with the mode added here.
    """
    return make_session(_mode_proto(qdq, mode).SerializeToString(), threads=threads,
                        optimization=MODE_OPTIMIZATION[mode], source=(source or QDQ_SOURCE).with_mode(mode))


def mode_runner(qdq: QdqModel | onnx.ModelProto, mode: Mode, *, taps: TapSelection = "all",
                threads: int | None = None, any_dtype: bool = False, source: BuiltModel | None = None) -> TapRunner:
    """A :class:`TapRunner` over ``qdq`` in ``mode`` (see :func:`mode_session`)."""
    keep = None if isinstance(taps, str) else taps  # "all" taps every tensor; "none" only the outputs
    if taps == "none":
        keep = ()
    return TapRunner(_as_model(_mode_proto(qdq, mode, keep=keep)), taps=taps, threads=threads,
                     optimization=MODE_OPTIMIZATION[mode], any_dtype=any_dtype,
                     source=(source or QDQ_SOURCE).with_mode(mode))


# --- running and comparing the two modes --------------------------------------------------------
@dataclass(frozen=True)
class ModeDisagreement:
    """How far ``simulate`` and ``int8-kernels`` disagree on one tensor, in quantisation steps.

    ``local_*``: both modes fed the *same* upstream codes (the simulation's), so only this
    tensor's own kernel differs; this is what "the kernels implement the simulation" means.
    ``accumulated_*``: the two whole models run end to end, where a one-step difference early on
    propagates and grows (MobileNetV2: tens of steps at the last layers).
    """

    tensor: str
    local_max_steps: float
    local_fraction_differing: float
    accumulated_max_steps: float
    accumulated_mean_steps: float


def compare_modes(qdq: QdqModel, batches: Iterable[np.ndarray | dict[str, np.ndarray]], *, threads: int | None = None) -> list[ModeDisagreement]:
    """Run the QDQ model in both modes and compare every 8-bit activation's integer codes.

    Codes are compared (not dequantised values) because tapping a DequantizeLinear output would
    stop onnxruntime fusing it, which is exactly what the int8-kernels mode is there to test; a
    QuantizeLinear output survives fusion as the fused kernel's own output. One code is one step.
    """
    names = list(qdq.code_tensors.values())
    if not names:
        return []
    model = _as_model(qdq.proto)
    sim = mode_runner(qdq, "simulate", taps=names, threads=threads, any_dtype=True)
    kern = mode_runner(qdq, "int8-kernels", taps=names, threads=threads, any_dtype=True)
    regions = {name: _CodeRegion(qdq.proto, name, set(names), threads=threads) for name in names}
    acc = {name: np.zeros(5) for name in names}  # local max, local differing, acc max, acc sum, count
    input_name = model.input_names[0] if len(model.input_names) == 1 else None
    for batch in batches:
        a = sim.run(batch)
        b = kern.run_views(batch)
        if isinstance(batch, dict):
            a.update(batch)
        elif input_name:
            a[input_name] = batch
        for name in names:
            local = regions[name].kernel_codes(a)
            stats = acc[name]
            local_diff = np.abs(local.astype(np.int32) - a[name].astype(np.int32))
            diff = np.abs(a[name].astype(np.int32) - b[name].astype(np.int32))
            stats[0] = max(stats[0], float(local_diff.max(initial=0)))
            stats[1] += float(np.count_nonzero(local_diff))
            stats[2] = max(stats[2], float(diff.max(initial=0)))
            stats[3] += float(diff.sum())
            stats[4] += diff.size
    by_code = {codes: tensor for tensor, codes in qdq.code_tensors.items()}
    return [
        ModeDisagreement(by_code[n], s[0], s[1] / max(s[4], 1), s[2], s[3] / max(s[4], 1))
        for n, s in acc.items()
    ]


class _CodeRegion:
    """The subgraph from the code tensors (or graph inputs) upstream of ``codes`` to ``codes``.

    Run with optimisations on and fed the simulation's upstream codes, it gives the int8 kernels'
    codes for this one tensor without any upstream disagreement.
    """

    def __init__(self, proto: onnx.ModelProto, codes: str, all_codes: set[str], *, threads: int | None) -> None:
        producers = {out: node for node in proto.graph.node for out in node.output}
        inits = {t.name for t in proto.graph.initializer}
        graph_inputs = {i.name for i in proto.graph.input}
        boundary: list[str] = []
        stack, seen = [codes], set()
        while stack:
            tensor = stack.pop()
            node = producers[tensor]
            for name in node.input:
                if not name or name in inits or name in seen:
                    continue
                seen.add(name)
                if name in all_codes or name in graph_inputs:
                    boundary.append(name)
                else:
                    stack.append(name)
        self.inputs = sorted(boundary)
        sub = onnx.utils.Extractor(proto).extract_model(self.inputs, [codes])
        self.codes = codes
        self.session = make_session(sub.SerializeToString(), threads=threads, optimization="all",
                                    source=QDQ_SOURCE.with_mode("int8-kernels"))

    def kernel_codes(self, upstream: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.codes], {name: upstream[name] for name in self.inputs})[0]


def _as_model(proto: onnx.ModelProto):
    from harness.model.load import Model

    return Model(path=Path("<qdq>"), proto=proto, sha256="", original_opset=13, original_ir_version=proto.ir_version)
