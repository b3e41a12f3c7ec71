"""How far the simulation can be trusted: a real toolchain against the simulation, tensor by tensor, in steps.

The unit is the tensor's quantisation step, because "one step" is what a correct simulation can
still differ by (a value on a rounding boundary goes either way). For a tensor the plan quantises,
the step is its scale (the smallest, if consumers differ); for any other tensor (a Conv output read
by an Add, the logits) it is the step a symmetric int8 grid over the fp32 values' range would have,
``max|x| / 127`` ("range"), so every tensor is read on the same scale.

Tensors a toolchain holds only as int8 codes for one consumer (ncnn's fused requantisation, see
:class:`~harness.backends.base.TensorMap`) are compared with what that consumer reads in the
simulation (its dequantised edge); every other tensor with the simulation's value of it.

Statistics accumulate over images (``update`` per image, then ``compute``), so memory does not grow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from harness.quant.plan import QuantPlan

#: A difference counts as "beyond one step" above ``step * (1 + _STEP_SLACK)``: two dequantised codes
#: one step apart differ by the step up to float rounding, which must not count.
_STEP_SLACK = 1e-3
_QMAX = 127.0


@dataclass(frozen=True)
class TensorFidelity:
    """One tensor: ``max_steps`` the largest difference in steps, ``beyond_one_step`` the share of elements
    more than one step apart, ``step_source`` "plan" or "range" (see the module docstring)."""

    name: str
    step: float
    step_source: str
    max_steps: float
    beyond_one_step: float
    elements: int
    cosine: float

    @property
    def within_one_step(self) -> float:
        return 1.0 - self.beyond_one_step


def plan_steps(plan: QuantPlan | None) -> dict[str, float]:
    """Tensor -> the smallest step the plan quantises it with (per-tensor activations only)."""
    out: dict[str, float] = {}
    if plan is None:
        return out
    for (tensor, _), tq in plan.activations.items():
        step = float(np.min(np.asarray(tq.step, np.float64)))
        out[tensor] = min(step, out.get(tensor, np.inf))
    return out


class FidelityAccumulator:
    """``update(real, sim, reference)`` per image; ``compute()`` -> one :class:`TensorFidelity` per tensor.

    ``edge``: ``(values, tensor, consumer) -> array | None``, the simulation's value of ``tensor``
    as ``consumer`` reads it (``SimulateBackend.edge_value``), used for ``requantized`` tensors. A
    "range" step is taken per image from that image's fp32 ``reference`` (streaming; ``step``
    reports the largest).
    """

    def __init__(self, *, steps: Mapping[str, float], requantized: Mapping[str, str] | None = None,
                 edge: Callable[[Mapping[str, np.ndarray], str, str], np.ndarray | None] | None = None) -> None:
        self.steps = dict(steps)
        self.requantized = dict(requantized or {})
        self.edge = edge
        self._stats: dict[str, _Stats] = {}  # insertion order = first seen, topological for backends

    def update(self, real: Mapping[str, np.ndarray], sim: Mapping[str, np.ndarray],
               reference: Mapping[str, np.ndarray]) -> None:
        for name, a in real.items():
            b = sim.get(name)
            if name in self.requantized and self.edge is not None:
                b = self.edge(sim, name, self.requantized[name])
            if b is None or (name not in self.steps and name not in reference):
                continue
            a = np.asarray(a, np.float64).reshape(-1)
            b = np.asarray(b, np.float64).reshape(-1)
            if a.size != b.size or a.size == 0:
                continue
            step = self.steps.get(name)
            if step is None:
                step = max(float(np.abs(reference[name]).max()), 1e-12) / _QMAX
            diff = np.abs(a - b)
            s = self._stats.setdefault(name, _Stats(source="plan" if name in self.steps else "range"))
            s.step = max(s.step, step)
            s.max_steps = max(s.max_steps, float(diff.max()) / step)
            s.beyond += int(np.count_nonzero(diff > step * (1 + _STEP_SLACK)))
            s.n += a.size
            s.dot += float(a @ b)
            s.aa += float(a @ a)
            s.bb += float(b @ b)

    def compute(self) -> list[TensorFidelity]:
        out = []
        for name, s in self._stats.items():
            denom = np.sqrt(s.aa * s.bb)
            cos = float(s.dot / denom) if denom > 0 else (1.0 if s.aa == s.bb else 0.0)
            out.append(TensorFidelity(name=name, step=s.step, step_source=s.source, max_steps=s.max_steps,
                                      beyond_one_step=s.beyond / s.n, elements=s.n, cosine=cos))
        return out


@dataclass
class _Stats:
    source: str
    step: float = 0.0
    max_steps: float = 0.0
    beyond: int = 0
    n: int = 0
    dot: float = 0.0
    aa: float = 0.0
    bb: float = 0.0


@dataclass(frozen=True)
class FidelitySummary:
    """The worst tensor in steps, the worst share beyond one step, and how many tensors miss the bar."""

    tensors: int
    max_steps: float
    worst_tensor: str
    max_beyond_one_step: float
    failing: tuple[str, ...]

    @classmethod
    def of(cls, rows: list[TensorFidelity], *, min_within: float = 0.999) -> "FidelitySummary":
        if not rows:
            return cls(0, 0.0, "", 0.0, ())
        worst = max(rows, key=lambda r: r.max_steps)
        failing = tuple(r.name for r in rows if r.within_one_step < min_within)
        return cls(len(rows), worst.max_steps, worst.name, max(r.beyond_one_step for r in rows), failing)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else 1.0
