"""How far the harness's simulation of a target is from the target's own toolchain, in quantisation steps.

Why: a gate built on the simulation is only as good as the simulation; this module measures it
against what the real toolchain computed on the same inputs (tpu-mlir's dumps for BM1684/BM1684X),
per tensor and at the task level, so a report can say how far the simulation can be trusted.

One *step* of a tensor is its quantisation step on the device (the scale of its int8/uint8 storage).
"Within one step" allows a tie that rounded the other way; ``beyond_one_step`` is the share of
elements further apart than that (plus a float32 slack of 1e-3 steps for the dequantisation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from harness.quant.plan import ALL_CONSUMERS, QuantPlan
from harness.quant.simulate import QdqModel, mode_runner
from harness.quant.tpu_mlir import TopGraph, read_lowered_graph

_SLACK_STEPS = 1e-3


@dataclass(frozen=True)
class StepAgreement:
    """Simulation vs toolchain on one tensor (all images it was compared on)."""

    tensor: str
    elements: int
    step: float
    max_steps: float
    beyond_one_step: float  # share of elements more than one step apart
    differing: float = 0.0  # share of elements not on the same code

    @property
    def within_one_step(self) -> float:
        return 1.0 - self.beyond_one_step


def step_agreement(tensor: str, ours: np.ndarray, theirs: np.ndarray, step: float) -> StepAgreement:
    """Compare two dequantised tensors of the same shape in units of ``step``."""
    a = np.asarray(ours, np.float64).reshape(-1)
    b = np.asarray(theirs, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{tensor}: shapes differ ({np.shape(ours)} vs {np.shape(theirs)})")
    steps = np.abs(a - b) / float(step)
    return StepAgreement(tensor=tensor, elements=int(a.size), step=float(step),
                         max_steps=float(steps.max(initial=0.0)),
                         beyond_one_step=float(np.mean(steps > 1.0 + _SLACK_STEPS)) if a.size else 0.0,
                         differing=float(np.mean(steps > _SLACK_STEPS)) if a.size else 0.0)


@dataclass(frozen=True)
class TaskAgreement:
    """Top-1 on every image: the simulation vs the toolchain, and each of them vs fp32."""

    images: int
    sim_equals_real: int
    real_equals_fp32: int
    sim_equals_fp32: int
    real_cosine_fp32: float  # mean logits cosine, toolchain vs fp32
    sim_cosine_fp32: float

    @property
    def every_image_agrees(self) -> bool:
        return self.sim_equals_real == self.images


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def task_agreement(sim: np.ndarray, real: np.ndarray, fp32: np.ndarray) -> TaskAgreement:
    """Top-1 agreement of ``[N, classes]`` logits, image by image."""
    s, r, f = (np.asarray(v).reshape(len(v), -1).argmax(1) for v in (sim, real, fp32))
    return TaskAgreement(images=len(s), sim_equals_real=int((s == r).sum()), real_equals_fp32=int((r == f).sum()),
                         sim_equals_fp32=int((s == f).sum()), real_cosine_fp32=float(_cosine(real, fp32).mean()),
                         sim_cosine_fp32=float(_cosine(sim, fp32).mean()))


def quantized_values(qdq: QdqModel, inputs: np.ndarray, tensors: Iterable[str], *,
                     threads: int | None = None) -> dict[str, np.ndarray]:
    """The simulation's dequantised value of each of ``tensors`` (the float value where it is not quantised),
    one batch-of-one run per input, stacked on the batch axis."""
    names = list(tensors)
    taps = {t: qdq.dequantized_tensors.get(t, qdq.edge_dequantized.get((t, ALL_CONSUMERS), t)) for t in names}
    runner = mode_runner(qdq, "simulate", taps=sorted(set(taps.values())), threads=threads)
    out: dict[str, list[np.ndarray]] = {t: [] for t in names}
    for i in range(len(inputs)):
        values = runner.run(inputs[i: i + 1])
        for t in names:
            out[t].append(np.array(values[taps[t]]))
    return {t: np.concatenate(v) for t, v in out.items()}


def plan_steps(plan: QuantPlan, tensors: Iterable[str]) -> dict[str, float]:
    """The simulation's own quantisation step of each tensor that has one (per-tensor scales)."""
    out = {}
    for t in tensors:
        tq = plan.activation_for(t, ALL_CONSUMERS)
        if tq is not None and np.size(tq.scale) == 1:
            out[t] = float(np.asarray(tq.scale).reshape(()))
    return out


def graph_output(proto: onnx.ModelProto) -> str:
    """The single graph output (the logits of a classifier)."""
    outputs = [o.name for o in proto.graph.output]
    if len(outputs) != 1:
        raise ValueError(f"expected one graph output, got {outputs}")
    return outputs[0]


def tensor_agreements(ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray],
                      steps: Mapping[str, float]) -> list[StepAgreement]:
    """Per-tensor agreement on every tensor both sides have and that has a step, in ``ours`` order."""
    return [step_agreement(t, ours[t], np.asarray(theirs[t]).reshape(np.shape(ours[t])), steps[t])
            for t in ours if t in theirs and t in steps]


@dataclass(frozen=True)
class FidelityReport:
    """One profile's simulation against one toolchain run: every mapped tensor, the output, the task."""

    profile: str
    tensors: list[StepAgreement]
    output: StepAgreement
    task: TaskAgreement

    @property
    def worst_share_beyond_one_step(self) -> float:
        return max([t.beyond_one_step for t in self.tensors] + [self.output.beyond_one_step])

    @property
    def max_steps(self) -> float:
        return max([t.max_steps for t in self.tensors] + [self.output.max_steps])


def compare_with_toolchain(qdq: QdqModel, plan: QuantPlan, *, inputs: np.ndarray, real_outputs: np.ndarray,
                           fp32_outputs: np.ndarray, real_tensors: Mapping[str, np.ndarray] | None = None,
                           steps: Mapping[str, float] | None = None, profile: str = "",
                           threads: int | None = None) -> FidelityReport:
    """Run the simulation on ``inputs`` and compare with the toolchain's dequantised outputs (and, on
    ``inputs[0]``, with ``real_tensors``: its dump of every tensor, keyed by ONNX tensor names).

    ``steps``: each tensor's quantisation step on the device (from its lowered graph); tensors without one
    use the simulation's own step.
    """
    out_name = graph_output(qdq.proto)
    real_tensors = dict(real_tensors or {})
    own = plan_steps(plan, [out_name, *real_tensors])
    steps = {**own, **dict(steps or {})}
    outputs = quantized_values(qdq, inputs, [out_name], threads=threads)[out_name]
    first = quantized_values(qdq, inputs[:1], [t for t in real_tensors if t in steps], threads=threads)
    return FidelityReport(profile=profile, tensors=tensor_agreements(first, real_tensors, steps),
                          output=step_agreement(out_name, outputs, real_outputs, steps[out_name]),
                          task=task_agreement(outputs, real_outputs, fp32_outputs))


def tpu_mlir_reference(top: TopGraph, lowered_graph: str | Path, dump: str | Path | None = None,
                       ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(steps, tensors)`` keyed by ONNX tensor: each tensor's device step from tpu-mlir's lowered graph, and the
    tensors of its ``.npz`` dump (``model_deploy --debug``) that belong to the fused graph ``top``.

    A graph input's own dump entry is the float input; its int8 value is the Cast tpu-mlir inserts before its
    first reader, named ``<input><reader>_si8`` (or ``_ui8``), which is what the simulation's input is compared with.
    """
    steps = {}
    for name, op in read_lowered_graph(lowered_graph).items():
        tensor = top.onnx_tensor(name)
        if op.scale and tensor is not None:
            steps[tensor] = op.scale
    tensors: dict[str, np.ndarray] = {}
    if dump is not None:
        with np.load(dump) as data:
            tensors = {top.onnx_tensor(k): data[k] for k in data.files if top.onnx_tensor(k) in top.tensors}
            for graph_input in (i.name for i in top.proto.graph.input):
                casts = [k for k in data.files if k.startswith(graph_input + "/") and k.endswith(("_si8", "_ui8"))]
                if casts:
                    tensors[graph_input] = data[casts[0]]
    return steps, tensors
