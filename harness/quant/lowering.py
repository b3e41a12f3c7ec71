"""Which ONNX nodes a Sophon chip computes in its own integer arithmetic, with what parameters.

Why: a plan of scales is not what runs on BM1684. tpu-mlir lowers each int8 op to integer
arithmetic with its own rounding (:mod:`harness.quant.bm1684`); the plan records, per lowered node,
the integer weights, bias, multipliers and shifts, and the QDQ writer
(:mod:`harness.quant.lowered_qdq`) computes exactly that. Everything not lowered (the model input,
Concat, Softmax, Reshape ...) keeps the plan's fake-quant.

What :func:`lower_plan` does to a plan built by ``build_plan``:

* activation scales become the device's: a tensor whose calibrated minimum is >= 0 is uint8 with
  ``threshold / 255``, others int8 with ``threshold / 127`` and the full [-128, 127] range (tpu-mlir's
  sign rule; the threshold is its owner's after the range rules);
* Conv, Gemm and 2-D MatMul with an initializer weight, Add of two tensors, and AveragePool /
  GlobalAveragePool are lowered when every tensor they read and the tensor they write are quantised;
  a Conv or Gemm takes the ReLU after it into itself (its result is the ReLU's output) and a Conv takes
  a 1x1 Conv before it (:class:`harness.quant.tpu_mlir.TopGraph`). The ReLU node stays in the graph
  (its float output is still compared); the device's result comes from the accumulator.
* their weights leave ``plan.weights``: the lowered record holds the codes (the merged 1x1 Conv then
  runs on float weights, only so that its output can still be compared: nothing reads it). So do the
  weights of a Conv whose fused ReLU is a float layer (the fused op is float in tpu-mlir).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from harness.model.graph import node_display_name
from harness.quant import bm1684
from harness.quant.calibrate import CalibrationRange
from harness.quant.plan import ALL_CONSUMERS, QuantPlan, TensorQuant
from harness.quant.range_rules import range_owners
from harness.quant.scheme import QuantScheme, quant_params
from harness.quant.tpu_mlir import TopGraph, node_attr

log = logging.getLogger(__name__)
LOWERINGS: tuple[str | None, ...] = (None, *bm1684.CHIPS)
_POOLS = frozenset({"AveragePool", "GlobalAveragePool"})


@dataclass(frozen=True)
class LoweredWeighted:
    """A Conv / Gemm / MatMul on integer codes: ``result`` is requantised from the accumulator, ``output`` (the
    node's own tensor) is the accumulator in real units."""

    node: str
    op_type: str
    input: str
    output: str
    result: str
    params: bm1684.WeightedParams
    relu: bool
    merged: str | None = None


@dataclass(frozen=True)
class LoweredAdd:
    """Each input requantised on its own (``requant`` holds one multiplier and shift per input), then summed."""

    node: str
    inputs: tuple[str, ...]
    output: str
    result: str
    requant: bm1684.Requant
    relu: bool


@dataclass(frozen=True)
class LoweredPool:
    """The window sum of the input codes times ``requant``."""

    node: str
    input: str
    output: str
    result: str
    kernel: int
    requant: bm1684.Requant


LoweredOp = LoweredWeighted | LoweredAdd | LoweredPool


def device_quant(scheme: QuantScheme, rng: CalibrationRange) -> tuple[TensorQuant, float]:
    """tpu-mlir's sign rule: ``(TensorQuant, scale in float64)``; uint8 ``[0, th]`` when the minimum is >= 0."""
    th = float(rng.threshold)
    if rng.observed_min >= 0:
        u8 = QuantScheme(bits=8, signed=False, symmetric=False, narrow_range=False, rounding=scheme.rounding)
        scale, zp = quant_params(u8, 0.0, th)
        return TensorQuant(scheme=u8, scale=scale, zero_point=zp), th / 255.0
    i8 = dataclasses.replace(scheme, signed=True, symmetric=True, narrow_range=False)
    scale, zp = quant_params(i8, -th, th)
    return TensorQuant(scheme=i8, scale=scale, zero_point=zp), th / 127.0


def lower_plan(folded: onnx.ModelProto, plan: QuantPlan, ranges: Mapping[str, CalibrationRange], *, chip: str,
               range_rules: str) -> QuantPlan:
    """``plan`` with the device's activation scales and the nodes ``chip`` lowers (see the module docstring)."""
    if chip not in bm1684.CHIPS:
        raise ValueError(f"unknown chip {chip!r}")
    owners = range_owners(folded, range_rules, frozenset(ranges))
    activations: dict[tuple[str, str], TensorQuant] = {}
    scales: dict[str, float] = {}
    for (tensor, consumer), tq in plan.activations.items():
        owner = owners.get(tensor, tensor)
        if owner not in ranges:
            activations[(tensor, consumer)] = tq
            continue
        activations[(tensor, consumer)], scale = device_quant(tq.scheme, ranges[owner])
        if consumer == ALL_CONSUMERS:
            scales[tensor] = scale
    lowerer = _Lowerer(folded, chip, scales, plan.float_layers)
    lowered = lowerer.run()
    gone = lowerer.lowered_weights | lowerer.float_fused_weights()
    weights = {k: v for k, v in plan.weights.items() if k not in gone}
    return dataclasses.replace(plan, activations=activations, weights=weights, lowered=lowered)


class _Lowerer:
    def __init__(self, folded: onnx.ModelProto, chip: str, scales: dict[str, float], floats: frozenset[str]) -> None:
        self.top = TopGraph(folded)
        self.chip = chip
        self.scales = scales
        self.floats = floats
        self.inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
        self.lowered_weights: set[str] = set()

    def run(self) -> dict[str, LoweredOp]:
        out: dict[str, LoweredOp] = {}
        merged_first = {node_display_name(m.first) for m in self.top.merged.values()}
        for node in self.top.nodes:
            name = node_display_name(node)
            if name in self.floats or name in merged_first:
                continue
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                op = self._weighted(node, name)
            elif node.op_type == "Add":
                op = self._add(node, name)
            elif node.op_type in _POOLS:
                op = self._pool(node, name)
            else:
                op = None
            if op is not None:
                out[name] = op
        skipped = [n for n in merged_first if not any(getattr(o, "merged", None) == n for o in out.values())]
        if skipped:
            log.info("1x1 Convs tpu-mlir merges but that stay float here (their Conv is not lowered): %s", skipped)
        return out

    def float_fused_weights(self) -> set[str]:
        """Weights of ops whose fused ReLU is a float layer: tpu-mlir names the fused op after the ReLU, so a qtable
        row (or ``float_layers``) on it keeps the Conv float too."""
        out = set()
        for pre_activation, relu in self.top.fused_relu.items():
            node = self.top.producer(pre_activation)
            if node_display_name(relu) in self.floats and node is not None and len(node.input) > 1:
                out.add(node.input[1])
                merged = self.top.merged.get(pre_activation)
                if merged is not None:  # and the 1x1 Conv tpu-mlir merged into it
                    out.add(merged.first.input[1])
        return out

    def _result(self, node: onnx.NodeProto) -> tuple[str, bool]:
        relu = self.top.fused_relu.get(node.output[0])
        return (relu.output[0], True) if relu is not None else (node.output[0], False)

    def _weighted(self, node: onnx.NodeProto, name: str) -> LoweredWeighted | None:
        if len(node.input) < 2 or node.input[1] not in self.inits or node.input[0] in self.inits:
            return None
        merged = self.top.merged.get(node.output[0])
        source = merged.first.input[0] if merged is not None else node.input[0]
        result, relu = self._result(node)
        if source not in self.scales or result not in self.scales or not self._supported(node):
            return None
        if merged is not None:
            if node_display_name(merged.first) in self.floats:
                return None
            weight, bias = merged.merged_weights(self.inits)
        else:
            weight = self.inits[node.input[1]].astype(np.float32)
            bias = self.inits[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else None
        has_bias = bias is not None
        channels = weight.shape[0] if node.op_type == "Conv" else (
            weight.shape[0] if node.op_type == "Gemm" and node_attr(node, "transB", 0) else weight.shape[-1])
        bias = np.zeros(channels, np.float32) if bias is None else bias.reshape(-1)
        s_in, s_out = self.scales[source], self.scales[result]
        if self.chip == "bm1684":
            params = bm1684.bm1684_weighted(weight, bias, s_in, s_out)
            if params is None:
                log.info("%s: tpu-mlir keeps it in float on BM1684 (no right shift fits); simulated as fake-quant", name)
                return None
        else:
            params = bm1684.bm1684x_weighted(weight, bias, s_in, s_out, per_channel=node.op_type == "Conv",
                                             has_bias=has_bias)
        self.lowered_weights.add(node.input[1])
        if merged is not None:
            self.lowered_weights.add(merged.first.input[1])
        return LoweredWeighted(node=name, op_type=node.op_type, input=source, output=node.output[0], result=result,
                               params=params, relu=relu, merged=node_display_name(merged.first) if merged else None)

    def _supported(self, node: onnx.NodeProto) -> bool:
        if node.op_type == "Gemm":
            return (node_attr(node, "alpha", 1.0) == 1.0 and node_attr(node, "beta", 1.0) == 1.0
                    and not node_attr(node, "transA", 0))
        if node.op_type == "MatMul":
            return self.inits[node.input[1]].ndim == 2
        return self.inits[node.input[1]].ndim == 4  # 2-D convolutions only

    def _add(self, node: onnx.NodeProto, name: str) -> LoweredAdd | None:
        ins = [i for i in node.input if i]
        result, relu = self._result(node)
        if len(ins) != 2 or any(i not in self.scales for i in ins) or result not in self.scales:
            return None
        s_out = self.scales[result]
        requant = (bm1684.bm1684_add([self.scales[i] for i in ins], s_out) if self.chip == "bm1684"
                   else bm1684.bm1684x_add([self.scales[i] for i in ins], s_out))
        if requant is None:
            return None
        return LoweredAdd(node=name, inputs=tuple(ins), output=node.output[0], result=result, requant=requant, relu=relu)

    def _pool(self, node: onnx.NodeProto, name: str) -> LoweredPool | None:
        source, result = node.input[0], node.output[0]
        if source not in self.scales or result not in self.scales:
            return None
        kernel = self._kernel(node)
        if kernel is None:
            return None
        requant = (bm1684.bm1684_avgpool(kernel) if self.chip == "bm1684"
                   else bm1684.bm1684x_avgpool(kernel, self.scales[source], self.scales[result]))
        if requant is None:
            return None
        return LoweredPool(node=name, input=source, output=result, result=result, kernel=kernel, requant=requant)

    def _kernel(self, node: onnx.NodeProto) -> int | None:
        """Window elements; None for a pool we do not lower (ceil mode, dilations, unknown input shape)."""
        if node.op_type == "AveragePool":
            shape = node_attr(node, "kernel_shape", None)
            if shape is None or node_attr(node, "ceil_mode", 0) or any(d != 1 for d in node_attr(node, "dilations", [1])):
                return None
            return int(np.prod(shape))
        dims = self.top.shape(node.input[0])
        if dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[2:]):
            return None
        return int(dims[2] * dims[3])
