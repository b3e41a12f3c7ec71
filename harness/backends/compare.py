"""fp32 / simulation / real toolchain side by side on the same inputs: per-tensor fidelity and the outputs of each.

One pass over the inputs runs onnxruntime fp32 (every tensor, the reference for "range" steps),
the harness's simulation, the backend, and the backend's own fp32 path when it has one (ncnn's
fp32 model against onnxruntime says whether the export itself is faithful). Only graph outputs are
kept per image, for task metrics; tensors are reduced to statistics as they stream by.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from harness.backends.base import Backend
from harness.backends.fidelity import FidelityAccumulator, FidelitySummary, TensorFidelity, cosine, plan_steps
from harness.backends.simulate import SimulateBackend
from harness.model.runner import TapRunner
from harness.quant.calibration import as_model
from harness.quant.plan import QuantPlan
from harness.quant.profiles import Profile

#: Output columns: onnxruntime fp32, the harness's simulation, the real toolchain, its fp32 path.
COLUMNS = ("fp32", "simulate", "real", "real_fp32")


@dataclass
class BackendComparison:
    """``tensors``: real vs simulation per mapped tensor; ``outputs[column][output]``: one array per input.
    ``fp32_max_abs``: the backend's fp32 path against onnxruntime, largest difference over mapped
    tensors (None when the backend has no fp32 path)."""

    backend: str
    tensors: list[TensorFidelity]
    outputs: dict[str, dict[str, list[np.ndarray]]]
    fp32_max_abs: float | None
    unmapped: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> FidelitySummary:
        return FidelitySummary.of(self.tensors)

    def stacked(self, column: str, output: str) -> np.ndarray:
        return np.stack(self.outputs[column][output])


def compare_backend(model: onnx.ModelProto, plan: QuantPlan, profile: Profile | None, inputs: Iterable[np.ndarray],
                    *, backend: Backend, work_dir: Path, threads: int | None = None) -> BackendComparison:
    """Prepare ``backend`` and the simulation for ``model`` (BN-folded) and ``plan``, and run both on ``inputs``
    (one batch-of-one array per input, for single-input models)."""
    sim = SimulateBackend(threads=threads)
    sim.prepare(model, plan, profile)
    backend.prepare(model, plan, profile, work_dir=work_dir)
    tmap = backend.tensor_map
    reference = TapRunner(as_model(model), taps="all", threads=threads)
    input_name = reference.input_names[0]
    outputs = [o.name for o in model.graph.output]
    fidelity = FidelityAccumulator(steps=plan_steps(plan), requantized=tmap.requantized, edge=sim.edge_value)
    run_fp32 = getattr(backend, "run_fp32", None)
    columns: dict[str, dict[str, list[np.ndarray]]] = {c: {o: [] for o in outputs} for c in COLUMNS}
    fp32_max_abs = 0.0 if run_fp32 is not None else None
    for x in inputs:
        ref = {input_name: x, **reference.run(x)}
        simulated = sim.run({input_name: x})
        real = backend.run({input_name: x})
        fidelity.update({k: v for k, v in real.items() if k != input_name}, simulated, ref)
        values = {"fp32": ref, "simulate": simulated, "real": real}
        if run_fp32 is not None:
            values["real_fp32"] = real32 = run_fp32({input_name: x})
            fp32_max_abs = max(fp32_max_abs, max(float(np.abs(v - ref[k]).max()) for k, v in real32.items()))
        for column, vals in values.items():
            for o in outputs:
                columns[column][o].append(np.asarray(vals[o]))
    notes = list(getattr(getattr(backend, "int8", None), "notes", []) or [])
    return BackendComparison(backend=backend.name, tensors=fidelity.compute(),
                             outputs={c: v for c, v in columns.items() if any(v.values())},
                             fp32_max_abs=fp32_max_abs, unmapped=tmap.unmapped, notes=notes)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> int:
    """How many rows of ``[N, ..., classes]`` logits have the same arg-max."""
    a, b = np.asarray(a), np.asarray(b)
    return int(np.sum(a.reshape(a.shape[0], -1).argmax(-1) == b.reshape(b.shape[0], -1).argmax(-1)))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine per row (image), averaged."""
    return float(np.mean([cosine(x, y) for x, y in zip(a, b)]))


__all__ = ["BackendComparison", "COLUMNS", "compare_backend", "mean_cosine", "top1_agreement"]
