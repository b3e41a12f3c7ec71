"""Layer-by-layer comparison of an fp32 model and its quantized version, and where it diverges.

Two errors per tensor, because they answer different questions:

* **accumulated** error: fp32 model vs quantized model at that tensor (``ref`` = fp32 tensor,
  ``test`` = the quantized model's tensor of the same name). "How wrong is it here?"
* **local** error: that tensor's own quantisation step (``ref`` = the quantized model's value
  before its QuantizeLinear, ``test`` = after DequantizeLinear). "How much did this step add?"

API: ``update_accumulated(name, ref, test)`` and ``update_local(name, ref, test)``, once per
batch and tensor, in any order; both stream into ``TensorStats``. ``compute()`` gives a
``LayerwiseResult`` with rows in topological order (the order of the ``TensorInfo`` list).

First divergent layer (``LayerwiseResult.first_divergent_layer``): let ``s(L)`` be the gate
similarity of L's accumulated error (cosine by default; euclid-similarity also possible),
``b(L)`` its bound from the tolerance set, ``deficit(L) = 1 - s(L)``, and ``inherited(L)`` the
*worst* (minimum) ``s`` over L's predecessors (the input tensors of the node that makes L; the
previous tensor in the list when no graph is given; 1.0 for a tensor with none). Then

1. L *crosses* when ``s(L) < b(L)``;
2. L *explains* its own crossing when its local error fails its bound (``reason="local"``), or
   when at least ``jump_share`` (default 0.5) of its deficit appeared at L itself:
   ``inherited(L) - s(L) >= jump_share * deficit(L)`` (``reason="jump"``);
3. the answer is the earliest L in topological order that crosses and explains. If layers cross
   but none explains (error drifting in slowly over many layers), the answer is the earliest
   crossing with ``reason="drift"``; if nothing crosses, ``None``.

So a layer that introduces a big error is chosen, not the later layers that merely inherit it
(their jump is small next to their deficit), and noisy early layers that stay above the bound are
never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from harness.compare.stats import TensorStats, TensorStatsResult
from harness.compare.tolerance import Tolerance, ToleranceSet, ToleranceVerdict
from harness.errors import ConfigError
from harness.model.graph import TensorInfo, topological_nodes

__all__ = ["Divergence", "LayerRow", "LayerwiseComparison", "LayerwiseResult", "predecessor_map"]

GateMetric = Literal["cosine", "euclid"]
_STAT = {"cosine": "cosine", "euclid": "euclid_similarity"}


def predecessor_map(proto: onnx.ModelProto, tensors: Sequence[TensorInfo]) -> dict[str, tuple[str, ...]]:
    """For each tensor in ``tensors``, the inputs of its producing node that are also in ``tensors``."""
    tracked = {t.name for t in tensors}
    out: dict[str, tuple[str, ...]] = {}
    for node in topological_nodes(proto.graph):
        preds = tuple(dict.fromkeys(i for i in node.input if i in tracked))
        for name in node.output:
            if name in tracked:
                out[name] = preds
    return out


@dataclass(frozen=True)
class LayerRow:
    """One tensor of the table. ``accumulated``/``local`` are None when never updated."""

    index: int
    name: str
    node_name: str
    op_type: str
    accumulated: TensorStatsResult | None
    local: TensorStatsResult | None
    verdict: ToleranceVerdict | None  # accumulated error vs the tensor's tolerance

    @property
    def passed(self) -> bool:
        return self.verdict is None or self.verdict.passed


@dataclass(frozen=True)
class Divergence:
    """The answer of ``first_divergent_layer``: which layer, its errors, and why it was chosen."""

    index: int
    name: str
    node_name: str
    op_type: str
    accumulated: TensorStatsResult
    local: TensorStatsResult | None
    inherited: float  # worst gate similarity over the predecessors
    bound: float
    reason: Literal["local", "jump", "drift"]

    def describe(self) -> str:
        loc = f", local cosine {self.local.cosine:.4f}" if self.local else ""
        return (f"first divergent layer: {self.node_name} ({self.op_type}) -> tensor {self.name!r}: "
                f"accumulated cosine {self.accumulated.cosine:.4f} (bound {self.bound:g}, inputs {self.inherited:.4f})"
                f"{loc}; reason: {self.reason}")


class LayerwiseComparison:
    """Streams per-tensor accumulated and local errors for a fixed, topologically ordered list.

    ``predecessors`` maps a tensor to the tensors its node reads (see ``predecessor_map``); without
    it each tensor's predecessor is the previous one in the list (a chain).
    """

    def __init__(self, tensors: Sequence[TensorInfo], *, tolerances: ToleranceSet | None = None,
                 predecessors: Mapping[str, Sequence[str]] | None = None) -> None:
        self.tensors = list(tensors)
        self.tolerances = tolerances or ToleranceSet()
        if predecessors is None:
            predecessors = {t.name: ((self.tensors[i - 1].name,) if i else ()) for i, t in enumerate(self.tensors)}
        self.predecessors = {k: tuple(v) for k, v in predecessors.items()}
        self._index = {t.name: i for i, t in enumerate(self.tensors)}
        self.accumulated_: dict[str, TensorStats] = {}
        self.local_: dict[str, TensorStats] = {}

    def _check(self, name: str) -> None:
        if name not in self._index:
            raise ConfigError(f"Tensor {name!r} is not in the layer list of this comparison",
                              expected="one of the names passed as `tensors`",
                              remedy="build the comparison from tensor_list() of the same model")

    def update_accumulated(self, name: str, ref: np.ndarray, test: np.ndarray) -> None:
        """fp32 tensor (``ref``) vs the quantized model's tensor of the same name (``test``)."""
        self._check(name)
        self.accumulated_.setdefault(name, TensorStats()).update(ref, test)

    def update_local(self, name: str, ref: np.ndarray, test: np.ndarray) -> None:
        """Pre-quantization value (``ref``) vs its dequantized value (``test``) in the quantized model."""
        self._check(name)
        self.local_.setdefault(name, TensorStats()).update(ref, test)

    def update(self, batch_fp32: Mapping[str, np.ndarray], batch_quant: Mapping[str, np.ndarray],
               local_pairs: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        """One batch: every tracked tensor present in both mappings, plus optional local pairs."""
        for t in self.tensors:
            if t.name in batch_fp32 and t.name in batch_quant:
                self.update_accumulated(t.name, batch_fp32[t.name], batch_quant[t.name])
        for name, (ref, test) in (local_pairs or {}).items():
            self.update_local(name, ref, test)

    def merge(self, other: LayerwiseComparison) -> LayerwiseComparison:
        for mine, theirs in ((self.accumulated_, other.accumulated_), (self.local_, other.local_)):
            for name, stats in theirs.items():
                if name in mine:
                    mine[name].merge(stats)
                else:
                    mine[name] = TensorStats().merge(stats)
        return self

    def compute(self) -> LayerwiseResult:
        rows = []
        for t in self.tensors:
            acc = self.accumulated_[t.name].compute() if t.name in self.accumulated_ else None
            loc = self.local_[t.name].compute() if t.name in self.local_ else None
            verdict = self.tolerances.check(t.name, acc) if acc is not None else None
            rows.append(LayerRow(t.index, t.name, t.node_name, t.op_type, acc, loc, verdict))
        return LayerwiseResult(rows=rows, tolerances=self.tolerances, predecessors=self.predecessors)

    def first_divergent_layer(self, gate: float | Tolerance | ToleranceSet | None = None, **kwargs: Any) -> Divergence | None:
        return self.compute().first_divergent_layer(gate, **kwargs)


@dataclass(frozen=True)
class LayerwiseResult:
    """Rows in topological order. Truthy when every compared tensor passes its tolerance."""

    rows: list[LayerRow]
    tolerances: ToleranceSet
    predecessors: Mapping[str, tuple[str, ...]]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed_rows(self) -> list[LayerRow]:
        return [r for r in self.rows if not r.passed]

    def to_records(self) -> list[dict[str, Any]]:
        records = []
        for r in self.rows:
            rec: dict[str, Any] = {"index": r.index, "name": r.name, "node_name": r.node_name, "op_type": r.op_type}
            for prefix, stats in (("acc", r.accumulated), ("local", r.local)):
                for key in ("cosine", "euclid_similarity", "sqnr_db", "nmse", "mae", "max_abs_error", "nonfinite_count"):
                    rec[f"{prefix}_{key}"] = getattr(stats, key) if stats is not None else math.nan
            rec["passed"] = r.passed
            rec["failures"] = "; ".join(r.verdict.failures) if r.verdict else ""
            records.append(rec)
        return records

    def to_dataframe(self) -> Any:
        import pandas as pd  # imported lazily: only reports need it

        return pd.DataFrame.from_records(self.to_records())

    def first_divergent_layer(self, gate: float | Tolerance | ToleranceSet | None = None, *,
                              metric: GateMetric = "cosine", jump_share: float = 0.5) -> Divergence | None:
        """See the module docstring for the rule. ``gate``: a bound for every tensor (float), a
        Tolerance, a ToleranceSet, or None for this result's tolerances."""
        if metric not in _STAT:
            raise ConfigError(f"Unknown gate metric {metric!r}", expected="'cosine' or 'euclid'")
        sim = {r.name: float(getattr(r.accumulated, _STAT[metric])) for r in self.rows if r.accumulated}
        drift: Divergence | None = None
        for r in self.rows:
            if r.accumulated is None:
                continue
            bound = _bound(gate, self.tolerances, r.name, metric)
            s = sim[r.name]
            if bound is None or not (s < bound or math.isnan(s)):
                continue
            inherited = min((sim[p] for p in self.predecessors.get(r.name, ()) if p in sim), default=1.0)
            local_fails = r.local is not None and float(getattr(r.local, _STAT[metric])) < bound
            jump = inherited - s
            reason: Literal["local", "jump", "drift"] | None = None
            if local_fails:
                reason = "local"
            elif jump >= jump_share * (1.0 - s) or math.isnan(s):
                reason = "jump"
            div = Divergence(r.index, r.name, r.node_name, r.op_type, r.accumulated, r.local, inherited, bound,
                             reason or "drift")
            if reason:
                return div
            drift = drift or div
        return drift


def _bound(gate: float | Tolerance | ToleranceSet | None, default: ToleranceSet, name: str,
           metric: GateMetric) -> float | None:
    if isinstance(gate, (int, float)):
        return float(gate)
    tol = (gate or default).for_tensor(name) if not isinstance(gate, Tolerance) else gate
    return getattr(tol, metric)
