"""Layer-by-layer comparison of an fp32 model and its quantized version, and where it diverges.

Two errors per tensor, because they answer different questions:

* **accumulated** error: fp32 model vs quantized model at that tensor (``ref`` = fp32 tensor, ``test`` = the
  quantized model's tensor of the same name, before its own quantisation). "How wrong is it here?"
* **local** error: one quantisation step (``ref`` = the value before its QuantizeLinear, ``test`` = after
  DequantizeLinear). "How much did this step add?" Recorded per tensor for the table (``update_local``) and
  per quantisation *site* (``update_site``: ``(tensor, "*")`` or ``(tensor, consumer)``, as in the plan) for
  attribution, since a tensor's own quantisation shows up in its consumers' accumulated error.

API: ``update_accumulated`` / ``update_local`` / ``update_site``, once per batch and tensor, in any order; all
stream into ``TensorStats``. ``compute()`` gives a ``LayerwiseResult`` with rows in topological order (the
order of the ``TensorInfo`` list), each checked against the one bound table (``harness.compare.tolerance``).
``first_divergent_layer`` applies the rule of :mod:`harness.compare.attribution`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.compare.attribution import Divergence, find_first_divergence
from harness.compare.regions import Region, chain_regions, layer_regions, predecessor_map
from harness.compare.stats import TensorStats, TensorStatsResult
from harness.compare.tolerance import Tolerance, ToleranceSet, ToleranceVerdict
from harness.errors import ConfigError
from harness.model.graph import TensorInfo

__all__ = ["Divergence", "LayerRow", "LayerwiseComparison", "LayerwiseResult", "layer_regions",
           "predecessor_map"]

_STAT_KEYS = ("cosine", "euclid_similarity", "sqnr_db", "nmse", "mae", "max_abs_error", "nonfinite_count")


@dataclass(frozen=True)
class LayerRow:
    """One tensor of the table. ``accumulated``/``local`` are None when never updated."""

    index: int
    name: str
    node_name: str
    op_type: str
    accumulated: TensorStatsResult | None
    local: TensorStatsResult | None
    verdict: ToleranceVerdict | None  # accumulated error vs the tensor's bounds

    @property
    def passed(self) -> bool:
        return self.verdict is None or self.verdict.passed


class LayerwiseComparison:
    """Streams per-tensor accumulated and local errors for a fixed, topologically ordered list.

    ``regions`` (see :func:`harness.compare.regions.layer_regions`) say how each tensor is computed from its
    nearest measured ancestors; without them each tensor is computed from the previous one in the list (a
    chain). ``folded`` maps a node to the BatchNormalization folded into it, for messages.
    """

    def __init__(self, tensors: Sequence[TensorInfo], *, tolerances: ToleranceSet | None = None,
                 regions: Mapping[str, Region] | None = None, folded: Mapping[str, str] | None = None) -> None:
        self.tensors = list(tensors)
        self.tolerances = tolerances or ToleranceSet()
        self.regions = dict(regions) if regions is not None else chain_regions(self.tensors)
        self.folded = dict(folded or {})
        self._index = {t.name: i for i, t in enumerate(self.tensors)}
        self.accumulated_: dict[str, TensorStats] = {}
        self.local_: dict[str, TensorStats] = {}
        self.sites_: dict[tuple[str, str], TensorStats] = {}

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
        """Pre-quantization value (``ref``) vs its dequantized value (``test``): the table's local column."""
        self._check(name)
        self.local_.setdefault(name, TensorStats()).update(ref, test)

    def update_site(self, tensor: str, consumer: str, ref: np.ndarray, test: np.ndarray) -> None:
        """One quantisation site of the plan (``consumer`` = a node's display name, or ``"*"``)."""
        self.sites_.setdefault((tensor, consumer), TensorStats()).update(ref, test)

    def update(self, batch_fp32: Mapping[str, np.ndarray], batch_quant: Mapping[str, np.ndarray],
               local_pairs: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        """One batch: every tracked tensor present in both mappings, plus optional local pairs."""
        for t in self.tensors:
            if t.name in batch_fp32 and t.name in batch_quant:
                self.update_accumulated(t.name, batch_fp32[t.name], batch_quant[t.name])
        for name, (ref, test) in (local_pairs or {}).items():
            self.update_local(name, ref, test)

    def merge(self, other: LayerwiseComparison) -> LayerwiseComparison:
        for mine, theirs in ((self.accumulated_, other.accumulated_), (self.local_, other.local_),
                             (self.sites_, other.sites_)):
            for key, stats in theirs.items():
                mine.setdefault(key, TensorStats()).merge(stats)  # type: ignore[attr-defined]
        return self

    def compute(self) -> LayerwiseResult:
        rows = []
        for t in self.tensors:
            acc = self.accumulated_[t.name].compute() if t.name in self.accumulated_ else None
            loc = self.local_[t.name].compute() if t.name in self.local_ else None
            verdict = self.tolerances.check(t.name, acc) if acc is not None else None
            rows.append(LayerRow(t.index, t.name, t.node_name, t.op_type, acc, loc, verdict))
        # Without per-site records (a chain, or a caller that only knows tensors), a tensor's local error is the
        # site every consumer reads.
        sites = ({k: s.compute() for k, s in self.sites_.items()} if self.sites_ else
                 {(name, "*"): s.compute() for name, s in self.local_.items()})
        return LayerwiseResult(rows=rows, tolerances=self.tolerances, regions=self.regions, sites=sites,
                               folded=self.folded)

    def first_divergent_layer(self, gate: float | Tolerance | ToleranceSet | None = None, **kwargs: Any) -> Divergence | None:
        return self.compute().first_divergent_layer(gate, **kwargs)


@dataclass(frozen=True)
class LayerwiseResult:
    """Rows in topological order. Truthy when every compared tensor passes its bounds."""

    rows: list[LayerRow]
    tolerances: ToleranceSet
    regions: Mapping[str, Region] = field(default_factory=dict)
    sites: Mapping[tuple[str, str], TensorStatsResult] = field(default_factory=dict)
    folded: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed_rows(self) -> list[LayerRow]:
        return [r for r in self.rows if not r.passed]

    @property
    def predecessors(self) -> dict[str, tuple[str, ...]]:
        return {name: region.inputs for name, region in self.regions.items()}

    def to_records(self) -> list[dict[str, Any]]:
        records = []
        for r in self.rows:
            rec: dict[str, Any] = {"index": r.index, "name": r.name, "node_name": r.node_name, "op_type": r.op_type}
            for prefix, stats in (("acc", r.accumulated), ("local", r.local)):
                for key in _STAT_KEYS:
                    rec[f"{prefix}_{key}"] = getattr(stats, key) if stats is not None else math.nan
            rec["passed"] = r.passed
            # `is not None`: a failed verdict is falsy
            rec["failures"] = "; ".join(str(f) for f in r.verdict.failures) if r.verdict is not None else ""
            records.append(rec)
        return records

    def to_dataframe(self) -> Any:
        import pandas as pd  # imported lazily: only reports need it

        return pd.DataFrame.from_records(self.to_records())

    def first_divergent_layer(self, gate: float | Tolerance | ToleranceSet | None = None, *,
                              jump_share: float = 0.5, drift_start_share: float = 0.1) -> Divergence | None:
        """See :mod:`harness.compare.attribution`. ``gate``: a cosine bound for every tensor (float), a Tolerance,
        a ToleranceSet, or None for this result's bounds."""
        if isinstance(gate, (int, float)):
            table = ToleranceSet(default=Tolerance.of(cosine=float(gate), source="given by the caller"))
        elif isinstance(gate, Tolerance):
            table = ToleranceSet(default=gate)
        else:
            table = gate or self.tolerances
        verdicts = {r.name: (r.verdict if table is self.tolerances and r.verdict is not None
                             else table.check(r.name, r.accumulated))
                    for r in self.rows if r.accumulated is not None}
        order = [(r.index, r.name, r.node_name, r.op_type) for r in self.rows]
        local = {r.name: r.local for r in self.rows if r.local is not None}
        return find_first_divergence(verdicts, order, self.regions, self.sites, local, jump_share=jump_share,
                                     drift_start_share=drift_start_share, folded=self.folded)
