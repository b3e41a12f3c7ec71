"""The lowered ops of a plan (:mod:`harness.quant.lowering`) as ONNX float subgraphs that compute in integers.

Why: the simulation has to reproduce the chip bit for bit where it can, and tpu-mlir's integer
arithmetic (shifts rounding half up, per-input requantisation of an Add, a pooled sum times a
multiplier) is not a fake-quant of a float op. Every value below is an integer held in float32 (or
float64 where a 31-bit multiplier needs it), so onnxruntime's float kernels compute it exactly:

* codes of an input: the producer's codes when a lowered op wrote it, else ``Round(x_dq / s)``; ``x_dq``
  is ``q * s`` in float32, within an ulp of the product, so the quotient rounds back to ``q`` exactly;
* accumulator: the Conv / Gemm of the codes with integer weights and bias: exact while partial sums stay
  below 2**24 (a layer's accumulator is about ``2**shift * 127`` for BM1684; a float32 sum that passes
  2**24 loses at most a few units there, a fraction of an output step);
* requantisation: ``Floor(acc * multiplier * 2**-shift + 0.5)``, exact in float32 for a pure shift, in
  float64 for a 31-bit multiplier (an integer product below 2**53);
* then the clamp to the output's integer range (0 for a fused ReLU) and ``* s_out``.

The node's own output keeps its name and holds the accumulator in real units (``acc * acc_scale``), so it
lines up with the fp32 model's tensor; the device's result is ``<result>__dq``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from harness.model.graph import node_display_name
from harness.quant.bm1684 import Requant
from harness.quant.lowering import LoweredAdd, LoweredOp, LoweredPool, LoweredWeighted
from harness.quant.plan import ALL_CONSUMERS, QuantPlan, TensorQuant

DQ_SUFFIX = "__dq"


def lowered_result_names(plan: QuantPlan) -> dict[str, str]:
    """``{result tensor: its dequantised name}`` for the tensors lowered ops write."""
    return {op.result: f"{op.result}{DQ_SUFFIX}" for op in plan.lowered.values()}


class LoweredOpsWriter:
    """Mixin of ``simulate._Writer`` (which provides ``_tmp``, ``_node``, ``_const``, ``_f``, ``_scale``)."""

    def write_lowered(self, op: LoweredOp, node: onnx.NodeProto, plan: QuantPlan,
                      dq_of: Callable[[str, str], str]) -> None:
        """Emit ``op`` (replacing ``node``); ``dq_of(tensor, consumer)`` names the value a consumer reads."""
        self._codes_cache: dict[str, str] = getattr(self, "_codes_cache", {})
        if isinstance(op, LoweredWeighted):
            self._weighted(op, node, plan, dq_of)
        elif isinstance(op, LoweredAdd):
            self._add(op, plan, dq_of)
        elif isinstance(op, LoweredPool):
            self._pool(op, node, plan, dq_of)
        else:
            raise TypeError(f"unknown lowered op {op!r}")

    # -- ops ------------------------------------------------------------------------------------
    def _weighted(self, op: LoweredWeighted, node: onnx.NodeProto, plan: QuantPlan, dq_of) -> None:
        p = op.params
        codes = self._input_codes(op.input, op.node, plan, dq_of)
        w = self._const(p.weight.astype(np.float32), "lw")
        per_channel = np.size(p.accumulator_scale) > 1 or np.size(p.requant.multiplier) > 1
        channel_shape = [1, -1, 1, 1] if op.op_type == "Conv" else [1, -1]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op.op_type == "Conv":
            acc = self._tmp_attrs("Conv", [codes, w, self._const(p.bias.astype(np.float32), "lb")], attrs)
        elif op.op_type == "Gemm":
            acc = self._tmp_attrs("Gemm", [codes, w, self._const(p.bias.astype(np.float32), "lb")], attrs)
        else:
            acc = self._tmp("Add", [self._tmp("MatMul", [codes, w]), self._const(p.bias.astype(np.float32), "lb")])
        scale = np.asarray(p.accumulator_scale, np.float32)
        self._node("Mul", [acc, self._const(scale.reshape(channel_shape) if per_channel else scale.reshape(()),
                                            "acc_scale")], [op.output])
        q = self._requant(acc, p.requant, shape=channel_shape if per_channel else None)
        self._store(q, op.result, plan, relu=op.relu)

    def _add(self, op: LoweredAdd, plan: QuantPlan, dq_of) -> None:
        terms = []
        for i, tensor in enumerate(op.inputs):
            one = Requant(np.asarray(op.requant.multiplier).reshape(-1)[i], np.asarray(op.requant.shift).reshape(-1)[i])
            terms.append(self._requant(self._input_codes(tensor, op.node, plan, dq_of), one, shape=None))
        total = self._tmp("Add", terms)
        self._node("Mul", [total, self._scale(self._site(plan, op.result))], [op.output])
        self._store(total, op.result, plan, relu=op.relu)

    def _pool(self, op: LoweredPool, node: onnx.NodeProto, plan: QuantPlan, dq_of) -> None:
        codes = self._input_codes(op.input, op.node, plan, dq_of)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mean = self._tmp_attrs(node.op_type, [codes], attrs)
        in_quant = plan.activation_for(op.input, op.node)
        # the float mean of the quantised input, as the fp32 model's tensor would be
        self._node("Mul", [mean, self._scale(in_quant)], [op.output])
        window_sum = self._tmp("Round", [self._tmp("Mul", [mean, self._f(float(op.kernel))])])
        self._store(self._requant(window_sum, op.requant, shape=None), op.result, plan, relu=False)

    # -- pieces ---------------------------------------------------------------------------------
    def _input_codes(self, tensor: str, consumer: str, plan: QuantPlan, dq_of) -> str:
        if tensor not in self._codes_cache:
            tq = plan.activation_for(tensor, consumer)
            self._codes_cache[tensor] = self._tmp("Round", [self._tmp("Div", [dq_of(tensor, consumer), self._scale(tq)])])
        return self._codes_cache[tensor]

    def _requant(self, acc: str, requant: Requant, *, shape: list[int] | None) -> str:
        """``Floor(acc * m * 2**-s + 0.5)``: float32 when exact, else through float64."""
        factor = requant.factor
        if np.all(np.asarray(requant.multiplier) == 1):  # a power of two: exact in float32 for any accumulator
            f = self._const(factor.astype(np.float32).reshape(shape) if shape else factor.astype(np.float32).reshape(()),
                            "rq")
            return self._tmp("Floor", [self._tmp("Add", [self._tmp("Mul", [acc, f]), self._f(0.5)])])
        f64 = self._const(factor.reshape(shape) if shape else factor.reshape(()), "rq64")
        wide = self._tmp_attrs("Cast", [acc], {"to": onnx.TensorProto.DOUBLE})
        half = self._const(np.asarray(0.5, np.float64), "c64")
        floor = self._tmp("Floor", [self._tmp("Add", [self._tmp("Mul", [wide, f64]), half])])
        return self._tmp_attrs("Cast", [floor], {"to": onnx.TensorProto.FLOAT})

    def _store(self, q: str, result: str, plan: QuantPlan, *, relu: bool) -> None:
        tq = self._site(plan, result)
        lo = max(tq.scheme.qmin, 0) if relu else tq.scheme.qmin
        clipped = self._tmp("Clip", [q, self._f(float(lo)), self._f(float(tq.scheme.qmax))])
        self._node("Mul", [clipped, self._scale(tq)], [f"{result}{DQ_SUFFIX}"])
        # a lowered reader takes these codes as they are: Round(dq / s) would give them back, two passes later
        self._codes_cache[result] = clipped

    @staticmethod
    def _site(plan: QuantPlan, tensor: str) -> TensorQuant:
        tq = plan.activations.get((tensor, ALL_CONSUMERS))
        if tq is None:
            raise ValueError(f"lowered op writes {tensor!r}, which the plan does not quantise")
        return tq

    def _tmp_attrs(self, op: str, inputs: list[str], attrs: dict) -> str:
        out = f"{self.PREFIX}t{len(self.new_nodes)}"
        self._node(op, inputs, [out], **attrs)
        return out


def lowered_nodes(graph: onnx.GraphProto, plan: QuantPlan) -> dict[str, onnx.NodeProto]:
    """The graph's nodes that ``plan`` lowers, by display name."""
    return {node_display_name(n): n for n in graph.node if node_display_name(n) in plan.lowered}
