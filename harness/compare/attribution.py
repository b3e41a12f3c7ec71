"""The first divergent layer: where the quantized model's error appears, and which layer to blame for it.

Inputs: every measured tensor's accumulated error (fp32 model vs quantized model at that tensor, *before* the
tensor's own quantisation), its bounds (the one bound table, :mod:`harness.compare.tolerance`), the region of
nodes that computes it from its nearest measured ancestors (:mod:`harness.compare.regions`), and the local
error of every quantisation site (pre-quantisation value vs its dequantised value).

For a bound key ``k``, ``D_k`` is the deficit from a perfect match on a scale where independent errors roughly
add (``1 - cosine``, the NMSE behind an SQNR, the error itself; see ``deficit``). The rule, in topological
order:

1. A tensor ``L`` **crosses** when any of its bounds fails; ``k`` is its worst failing bound (furthest beyond
   what the bound allows). NaN/Inf values make the first tensor that holds them the answer (``nonfinite``).
2. ``inherited(L)`` is the worst ``D_k`` over ``L``'s measured inputs (through unmeasured nodes, never assumed
   perfect), 0 for a tensor computed from the graph input only. ``jump = D_k(L) - inherited(L)``.
3. A **jump** is ``jump >= jump_share * D_k(L)`` (default half the deficit appeared inside ``L``'s region).
   It is then attributed: if a quantisation site inside the region (an edge the region reads) has a local
   deficit of at least ``jump_share * jump``, the cause is that **quantisation**, and the layer to keep in
   higher precision is the node that owns the site (the producer for a per-tensor site, as tpu-mlir's qtable
   does; the consumer for a per-edge site, as ncnn's table does). A region that only moves values (Transpose,
   Reshape, Concat, ...) cannot add error itself, so its cause is always the quantisation of what it reads.
   Otherwise the cause is the region's weighted node (the Conv of a fused Conv -> Clip), else its producer.
4. The answer is the earliest crossing with a jump. If layers cross but none jumps, the error **drifted** in:
   the answer is the earliest crossing, with where the decay started (the earliest tensor on its worst-input
   chain holding ``drift_start_share`` of the deficit) and the largest single step on that chain. No single
   layer kept in float fixes a drift, and the remedy says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from harness.compare.regions import Region
from harness.compare.stats import TensorStatsResult
from harness.compare.tolerance import ToleranceVerdict, deficit, stat_of

__all__ = ["Divergence", "find_first_divergence"]

Reason = Literal["jump", "quantization", "drift", "nonfinite"]
_UNITS = {"sqnr_db": " dB"}


def _deficit(stats: TensorStatsResult | None, key: str) -> float:
    if stats is None:
        return 0.0
    if key == "finite":
        return math.inf if stats.nonfinite_count else 0.0
    return deficit(key, stat_of(stats, key))


@dataclass(frozen=True)
class Divergence:
    """Where the error crossed a bound (``name``, its node) and what caused it (``cause_*``)."""

    index: int
    name: str
    node_name: str
    op_type: str
    accumulated: TensorStatsResult
    local: TensorStatsResult | None
    metric: str  # the bound key that decided (cosine, euclid, sqnr_db, max_abs, mae, nmse, finite)
    observed: float
    bound: float
    bound_source: str
    inherited: float  # the metric at the worst measured input (math.nan when there is none)
    inherited_from: str | None
    reason: Reason
    cause_node: str | None  # the layer to keep in higher precision (None for a drift)
    cause_op_type: str | None
    cause_tensor: str | None  # the quantised tensor whose rounding or clipping caused it (reason quantization)
    cause_output: str | None = None  # the tensor cause_node writes (its name in tpu-mlir qtables, NNIE _hp tops)
    cause_local: float | None = None  # that site's local metric
    drift_start: str | None = None
    largest_step: str | None = None
    folded_from: str | None = None  # BatchNormalization folded into cause_node

    def _fmt(self, value: float) -> str:
        if self.metric == "finite":
            return f"{int(value)} NaN/Inf"
        return f"{self.metric} {value:.6g}{_UNITS.get(self.metric, '')}"

    @property
    def cause(self) -> str:
        if self.cause_node is None:
            return "no single layer"
        folded = f", BatchNormalization {self.folded_from!r} folded in" if self.folded_from else ""
        return f"{self.cause_op_type} {self.cause_node!r}{folded}"

    def describe(self) -> str:
        op = "<=" if self.metric in ("max_abs", "mae", "nmse", "finite") else ">="
        head = (f"first divergent layer: {self.node_name} ({self.op_type}) -> tensor {self.name!r}: "
                f"{self._fmt(self.observed)} (required {op} {self.bound:g}, {self.bound_source})")
        inputs = (f"inputs {self._fmt(self.inherited)} at {self.inherited_from!r}" if self.inherited_from
                  else "inputs exact")
        if self.reason == "nonfinite":
            return f"{head}; the first tensor with NaN/Inf values, made by {self.cause}"
        if self.reason == "drift":
            step = f"; largest single step at {self.largest_step!r}" if self.largest_step else ""
            return (f"{head}, {inputs}; drift: the error grew gradually from {self.drift_start!r} to here{step}, "
                    "no single layer explains it")
        if self.reason == "quantization":
            local = f" (local {self._fmt(self.cause_local)})" if self.cause_local is not None else ""
            return (f"{head}, {inputs}; jump caused by the quantisation of tensor {self.cause_tensor!r}{local}, "
                    f"owned by {self.cause}")
        return f"{head}, {inputs}; jump inside {self.cause} (its quantised weights or arithmetic)"


@dataclass(frozen=True)
class _Site:
    tensor: str
    node: str
    op_type: str
    stats: TensorStatsResult
    per_tensor: bool  # quantised once after its producer (the producer owns it), not per consumer edge


def _sites(region: Region, sites: Mapping[tuple[str, str], TensorStatsResult]) -> list[_Site]:
    """The quantisation sites the region reads, with the node that owns each."""
    ops = dict(region.nodes)
    out: list[_Site] = []
    for tensor, consumer in region.edges:
        if (tensor, consumer) in sites:
            out.append(_Site(tensor, consumer, ops.get(consumer, "?"), sites[(tensor, consumer)], False))
        elif (tensor, "*") in sites:
            node, op = region.producers.get(tensor, (consumer, ops.get(consumer, "?")))
            out.append(_Site(tensor, node, op, sites[(tensor, "*")], tensor in region.producers))
    return out


def find_first_divergence(
    verdicts: Mapping[str, ToleranceVerdict], order: list[tuple[int, str, str, str]],
    regions: Mapping[str, Region], sites: Mapping[tuple[str, str], TensorStatsResult],
    local: Mapping[str, TensorStatsResult], *, jump_share: float = 0.5, drift_start_share: float = 0.1,
    folded: Mapping[str, str] | None = None,
) -> Divergence | None:
    """The rule of the module docstring. ``order``: (index, tensor, node, op type) in topological order;
    ``verdicts``: the accumulated error of each measured tensor against its bounds."""
    folded = folded or {}
    drift: Divergence | None = None
    for index, name, node, op_type in order:
        v = verdicts.get(name)
        if v is None or v.passed or v.tolerance.skip or v.worst is None:
            continue
        key, worst = v.worst.key, v.worst
        region = regions.get(name, Region(((node, op_type),), (), (), {}))
        acc = v.stats
        d_here = _deficit(acc, key)
        measured_inputs = [i for i in region.inputs if i in verdicts]
        worst_in = max(measured_inputs, key=lambda i: _deficit(verdicts[i].stats, key), default=None)
        d_in = _deficit(verdicts[worst_in].stats, key) if worst_in else 0.0
        inherited = (float(verdicts[worst_in].stats.nonfinite_count) if key == "finite"
                     else stat_of(verdicts[worst_in].stats, key)) if worst_in else math.nan
        base = dict(index=index, name=name, node_name=node, op_type=op_type, accumulated=acc,
                    local=local.get(name), metric=key, observed=worst.observed, bound=worst.bound.value,
                    bound_source=worst.bound.source, inherited=inherited, inherited_from=worst_in)
        own = region.weighted_node() or (region.nodes[0] if region.nodes else (node, op_type))
        if key == "finite":
            return Divergence(**base, reason="nonfinite", cause_node=own[0], cause_op_type=own[1],
                              cause_tensor=None, cause_output=name, folded_from=folded.get(own[0]))
        jump = d_here - d_in
        if jump >= jump_share * d_here:
            candidates = [(s, _deficit(s.stats, key)) for s in _sites(region, sites)]
            best = max(candidates, key=lambda c: c[1], default=None)
            if best is not None and (best[1] >= jump_share * jump or region.moves_values_only):
                site = best[0]
                cause_local = stat_of(site.stats, key)
                return Divergence(**base, reason="quantization", cause_node=site.node, cause_op_type=site.op_type,
                                  cause_tensor=site.tensor, cause_output=site.tensor if site.per_tensor else name,
                                  cause_local=cause_local, folded_from=folded.get(site.node))
            if region.moves_values_only and worst_in is not None:
                producer = regions.get(worst_in)
                p = producer.nodes[0] if producer and producer.nodes else (worst_in, "?")
                return Divergence(**base, reason="quantization", cause_node=p[0], cause_op_type=p[1],
                                  cause_tensor=worst_in, cause_output=worst_in, folded_from=folded.get(p[0]))
            return Divergence(**base, reason="jump", cause_node=own[0], cause_op_type=own[1], cause_tensor=None,
                              cause_output=name, folded_from=folded.get(own[0]))
        if drift is None:
            start, step = _drift_chain(name, key, verdicts, regions, drift_start_share * d_here)
            drift = Divergence(**base, reason="drift", cause_node=None, cause_op_type=None, cause_tensor=None,
                               drift_start=start, largest_step=step)
    return drift


def _drift_chain(name: str, key: str, verdicts: Mapping[str, ToleranceVerdict], regions: Mapping[str, Region],
                 start_deficit: float) -> tuple[str, str | None]:
    """Walk back along the worst input: the earliest tensor holding ``start_deficit``, and the largest step."""
    chain, current, seen = [], name, set()
    while current is not None and current not in seen:
        seen.add(current)
        chain.append(current)
        inputs = [i for i in regions.get(current, Region((), (), (), {})).inputs if i in verdicts]
        current = max(inputs, key=lambda i: _deficit(verdicts[i].stats, key), default=None)
    deficits = [_deficit(verdicts[t].stats, key) for t in chain]
    start = next((t for t, d in zip(reversed(chain), reversed(deficits)) if d >= start_deficit), name)
    steps = [(deficits[i] - (deficits[i + 1] if i + 1 < len(chain) else 0.0), chain[i]) for i in range(len(chain))]
    return start, max(steps)[1] if steps else None
