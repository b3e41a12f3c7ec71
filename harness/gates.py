"""Gates: the suite's ``[gates]`` table, and verdicts that say what failed, by how much, and what to do.

Every bound carries its *source* (the suite file and key, or the documented default it came from), because
"cosine 0.97 < 0.99" is only actionable when you know whether 0.99 was a deliberate choice for this model or a
tool default nobody revisited. Every verdict also states the least bound that would have passed (Polygraphy's
habit), so loosening a gate is a measured decision, not a guess.

Comparisons are inclusive (``observed >= min`` and ``observed <= max`` pass). An undefined observation (NaN)
never passes: a gate that cannot be evaluated must not turn green.

Metric drops (``[gates.metrics]``): ``drop = fp32 - int8`` for higher-is-better metrics, relative drop
``drop / fp32``. With ``require_significant = false`` (default) the point estimate on the evaluation set
decides. With ``true``, a drop fails only when the point estimate exceeds the limit **and** the paired-bootstrap
interval of fp32 - int8 lies entirely above 0 (``ci_low > 0``: the drop is real, not resampling noise). We chose
this over "the lower CI bound exceeds the limit" because that rule almost never fails on the small evaluation
sets suites use (a 100-image CI is several mAP points wide), which would make the gate decorative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.compare.tolerance import PRESETS, Bound, Tolerance, ToleranceSet, ToleranceVerdict, deficit
from harness.errors import ConfigError
from harness.suite_schema import TableReader

if TYPE_CHECKING:
    from harness.model.names import LayerNames

Op = Literal[">=", "<="]

#: Check names a verdict can carry; ``[suite] expect_reason`` must be one of them.
CHECKS: tuple[str, ...] = (
    "layerwise", "output", "bmrt", "input-parity", "fp32-golden", "metric", "metric-golden", "calibration-drift",
    "leakage", "reference", "finite",
)

# --- documented defaults --------------------------------------------------------------------------
_DEPLOY = "default: tpu-mlir model_deploy --tolerance 0.8,0.5 (its deploy default, int8 vs fp32 on every tensor)"
#: gate key -> (default value or None when off, source, check, op)
SCALAR_GATES: dict[str, tuple[float | None, str, str, Op]] = {
    "layer_cosine_min": (0.8, _DEPLOY, "layerwise", ">="),
    "layer_euclid_min": (0.5, _DEPLOY, "layerwise", ">="),
    "layer_sqnr_db_min": (None, "default: off (no toolchain publishes an SQNR bound)", "layerwise", ">="),
    "layer_max_abs_max": (None, "default: off (absolute errors depend on each tensor's scale)", "layerwise", "<="),
    "output_cosine_min": (0.8, _DEPLOY, "output", ">="),
    "output_euclid_min": (0.5, _DEPLOY, "output", ">="),
    "output_bmrt_tol": (0.01, "default: bmrt_test's float tolerance (int8 simulation vs int8 kernels)", "bmrt", "<="),
    "input_parity_max_abs": (
        1e-6, "default: harness; the same decoder and spec must give the same tensor up to float32 rounding",
        "input-parity", "<=",
    ),
    "fp32_golden_cosine_min": (
        0.99999, "default: harness; fp32 reruns differ only by summation order (threads, SIMD)", "fp32-golden", ">=",
    ),
    "fp32_golden_max_abs": (
        1e-4, "default: harness; fp32 reruns differ only by summation order (threads, SIMD)", "fp32-golden", "<=",
    ),
    "reference_cosine_min": (
        0.99999, "default: harness; two exports of the same weights differ only by float rounding", "reference", ">=",
    ),
    "reference_max_abs": (
        1e-4, "default: harness; two exports of the same weights differ only by float rounding", "reference", "<=",
    ),
    "metric_golden_max_abs": (
        1e-6, "default: harness; a deterministic pipeline (same metrics to the last bit with 1 and 2 threads)",
        "metric-golden", "<=",
    ),
    "calibration_drift_max_rel": (
        0.05, "default: harness; about one NNIE 8-bit log level (2^(1/16) - 1 = 4.4%)", "calibration-drift", "<=",
    ),
    "calibration_overlap_max": (
        0, "default: harness; calibration images must not be evaluation images", "leakage", "<=",
    ),
}
LAYER_METRICS: tuple[str, ...] = ("cosine", "euclid", "sqnr_db", "max_abs")


def layer_key(metric: str) -> str:
    """The override key of a layer metric: ``cosine_min``, ``euclid_min``, ``sqnr_db_min``, ``max_abs_max``."""
    return f"{metric}_max" if metric == "max_abs" else f"{metric}_min"
_METRIC_DROP_DEFAULT = (0.01, "default: Intel Neural Compressor accuracy_criterion (relative 1%)")
_REMEDIES: dict[str, str] = {
    "layerwise": "keep the first divergent layer in float ([quant] float_layers), try another calibration "
                 "method, or relax it in [gates.layer_overrides] if the loss is accepted",
    "output": "look at the layerwise report for the first divergent layer; keep it in float or change calibration",
    "bmrt": "the int8 kernels disagree with the simulation: check rounding mode and the profile's runtime",
    "input-parity": "preprocessing changed: compare [preprocess] with the deploy code (mean/std, channel order, "
                    "resize) and the OpenCV version",
    "fp32-golden": "the fp32 model or runtime changed; if intended, rerun with --golden-update and commit",
    "metric": "inspect the layerwise report, keep the worst layers in float, or recalibrate on more images",
    "calibration-drift": "calibration data or method changed; if intended, rerun with --golden-update",
    "leakage": "use calibration images that are not in the evaluation split",
    "reference": "the model and its reference disagree from the named layer on: compare that layer's parameters "
                 "in both files (a converter's padding, pooling rounding, eps or channel order)",
}


def remedy_for(check: str) -> str:
    """The standard advice when ``check`` fails."""
    return _REMEDIES.get(check, "see the report")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one gate; truthy when it passed.

    ``least_passing`` is the tightest bound that this observation would have passed (None when any bound
    would, e.g. a drop that is not significant). ``text`` is two lines: the verdict, then the remedy.
    """

    check: str
    gate: str
    passed: bool
    observed: float
    bound: float
    op: Op
    source: str
    least_passing: float | None
    message: str
    remedy: str
    subject: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def text(self) -> str:
        return f"{self.message}\n{self.remedy}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check, "gate": self.gate, "passed": self.passed, "observed": _json_float(self.observed),
            "bound": self.bound, "op": self.op, "source": self.source,
            "least_passing": _json_float(self.least_passing), "message": self.message, "remedy": self.remedy,
            "subject": self.subject, "details": {k: _json_float(v) for k, v in self.details.items()},
        }


def _json_float(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _as_bound(bound: Bound | float) -> Bound:
    return bound if isinstance(bound, Bound) else Bound(float(bound), "given by the caller")


def _check(
    gate: str, observed: float, bound: Bound | float, op: Op, *, check: str | None, subject: str | None
) -> Verdict:
    b = _as_bound(bound)
    check = check or (SCALAR_GATES[gate][2] if gate in SCALAR_GATES else gate)
    observed = float(observed)
    defined = not math.isnan(observed)
    passed = defined and (observed >= b.value if op == ">=" else observed <= b.value)
    where = f" at {subject}" if subject else ""
    state = "passed" if passed else "FAILED"
    if defined:
        message = f"{check} {state}{where}: {gate} observed {observed:.6g}, required {op} {b.value:.6g} ({b.source})"
        if not passed:
            message += f"; would pass with {gate} = {observed:.6g}"
    else:
        message = f"{check} FAILED{where}: {gate} is undefined (NaN), required {op} {b.value:.6g} ({b.source})"
    remedy = "nothing to do" if passed else _REMEDIES.get(check, "see the report")
    return Verdict(check=check, gate=gate, passed=passed, observed=observed, bound=b.value, op=op, source=b.source,
                   least_passing=observed if defined else None, message=message, remedy=remedy, subject=subject)


def check_min(name: str, observed: float, bound: Bound | float, *, check: str | None = None,
              subject: str | None = None) -> Verdict:
    """Pass when ``observed >= bound`` (similarities, SQNR)."""
    return _check(name, observed, bound, ">=", check=check, subject=subject)


def check_max(name: str, observed: float, bound: Bound | float, *, check: str | None = None,
              subject: str | None = None) -> Verdict:
    """Pass when ``observed <= bound`` (errors, drifts, drops)."""
    return _check(name, observed, bound, "<=", check=check, subject=subject)


# --- layer gates ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerOverride:
    """``[gates.layer_overrides] "pattern" = { cosine_min = .., euclid_min = .., sqnr_db_min = .., max_abs_max = ..,
    skip = .. }``. A pattern is an exact tensor name or an ``fnmatch`` glob (``*``, ``?``, ``[...]``),
    case-sensitive. Precedence is the bound table's (:mod:`harness.compare.tolerance`)."""

    pattern: str
    bounds: Mapping[str, Bound]  # layer metric -> bound
    skip: bool = False

    @property
    def is_glob(self) -> bool:
        return any(c in self.pattern for c in "*?[")

    def matches(self, layer: str) -> bool:
        return fnmatchcase(layer, self.pattern) if self.is_glob else layer == self.pattern

    def check_against(self, names: LayerNames, *, file: str) -> None:
        """ConfigError when the pattern matches no compared tensor of the model (``names.layers``): an
        override that matches nothing would leave the bound it meant to set at the suite default."""
        names.check_pattern(self.pattern, is_glob=self.is_glob, matches=self.matches,
                            where=f"[gates.layer_overrides] {self.pattern!r} ({file})")


@dataclass(frozen=True)
class LayerReport:
    """Every compared tensor's verdict against its bounds (topological order) and the summary verdict."""

    tensors: tuple[ToleranceVerdict, ...]
    summary: Verdict

    def __bool__(self) -> bool:
        return self.summary.passed

    @property
    def failed(self) -> tuple[ToleranceVerdict, ...]:
        return tuple(v for v in self.tensors if not v.passed)


def layer_bounds(layer: str, config: GatesConfig) -> dict[str, Bound] | None:
    """The bound per layer metric for ``layer`` from the suite's bound table, or None when an override skips it."""
    tol = config.layers.for_tensor(layer)
    return None if tol.skip else dict(tol.bounds)


def check_layers(tensors: Sequence[ToleranceVerdict], *, first_divergent: str | None = None,
                 remedy: str | None = None, check: str = "layerwise") -> LayerReport:
    """The summary of every tensor's verdict (topological order): the count failing, the worst (largest
    shortfall relative to what its bound allows) and the first divergent layer's description (from
    :meth:`harness.compare.layerwise.LayerwiseResult.first_divergent_layer`, the one answer shared by the
    verdict, results.json and the report) with its ``remedy``."""
    gated = [v for v in tensors if not v.tolerance.skip and (v.tolerance.bounds or not v.passed)]
    failed = [v for v in gated if not v.passed]
    details: dict[str, Any] = {"n_layers": len(gated), "n_layers_failed": len(failed)}
    if not gated:
        summary = Verdict(check=check, gate="layers", passed=True, observed=float("nan"), bound=float("nan"),
                          op=">=", source="-", least_passing=None, message=f"{check} passed: no layer was gated",
                          remedy="nothing to do", details=details)
        return LayerReport(tuple(tensors), summary)
    if not failed:
        tight = min(((v, k) for v in gated for k in v.tolerance.bounds if k in v.min_passing),
                    key=lambda vk: _margin(vk[0], vk[1]), default=None)
        if tight is None:
            message = f"{check} passed: {len(gated)} layers"
            return LayerReport(tuple(tensors), Verdict(check=check, gate="layers", passed=True, observed=float("nan"),
                                                       bound=float("nan"), op=">=", source="-", least_passing=None,
                                                       message=message, remedy="nothing to do", details=details))
        v, key = tight
        b = v.tolerance.bounds[key]
        op: Op = "<=" if key == "max_abs" else ">="
        message = (f"{check} passed: {len(gated)} layers; tightest {v.name} {key} {v.min_passing[key]:.6g} "
                   f"(required {op} {b.value:.6g}, {b.source})")
        return LayerReport(tuple(tensors), Verdict(
            check=check, gate=f"layer_{layer_key(key)}", passed=True, observed=v.min_passing[key], bound=b.value,
            op=op, source=b.source, least_passing=v.min_passing[key], message=message, remedy="nothing to do",
            subject=v.name, details=details))
    worst_v = max(failed, key=lambda v: v.worst.severity if v.worst else 0.0)
    worst = worst_v.worst
    assert worst is not None
    details["failed_layers"] = [v.name for v in failed[:20]]
    message = (f"{check} FAILED: {len(failed)} of {len(gated)} layers beyond their bounds; worst {worst_v.name} "
               f"{worst} ({worst.bound.source})")
    if first_divergent:
        message += f"; {first_divergent}"
        details["first_divergent"] = first_divergent
    gate = "nonfinite_count" if worst.key == "finite" else f"layer_{layer_key(worst.key)}"
    summary = Verdict(check=check, gate=gate, passed=False, observed=worst.observed, bound=worst.bound.value,
                      op=worst.op, source=worst.bound.source,  # type: ignore[arg-type]
                      least_passing=worst.observed, message=message,
                      remedy=remedy or _REMEDIES["layerwise"], subject=worst_v.name, details=details)
    return LayerReport(tuple(tensors), summary)


def _margin(v: ToleranceVerdict, key: str) -> float:
    """Distance to the bound relative to what the bound allows (small = tight)."""
    allowed = deficit(key, v.tolerance.bounds[key].value)
    seen = deficit(key, v.min_passing[key])
    return 1.0 - seen / allowed if allowed > 0 else math.inf


# --- metric drops ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DropGate:
    """``[gates.metrics] name = { drop_max = .., drop_max_rel = .., require_significant = .. }``."""

    drop_max: Bound | None = None
    drop_max_rel: Bound | None = None
    require_significant: bool = False


def check_drop(metric: str, fp32: float, quant: float, ci: Any, gate: DropGate) -> Verdict:
    """Verdict on ``fp32 - quant`` (see the module docstring for the significance rule).

    ``ci`` is ``(low, high)`` of the paired-bootstrap fp32 - int8 difference, a ``BootstrapResult``, or None.
    Without an interval, ``require_significant`` cannot be honoured and the point estimate decides (said in the
    message, so nobody believes a significance test ran).
    """
    if gate.drop_max is None and gate.drop_max_rel is None:
        raise ConfigError(f"Drop gate for {metric} has no limit", expected="drop_max and/or drop_max_rel")
    drop = float(fp32) - float(quant)
    rel = drop / float(fp32) if float(fp32) > 0 else float("nan")
    low, high = _interval(ci)
    candidates = []
    for key, observed, bound in (("drop_max", drop, gate.drop_max), ("drop_max_rel", rel, gate.drop_max_rel)):
        if bound is not None:
            candidates.append(check_max(f"metrics.{metric}.{key}", observed, bound, check="metric", subject=metric))
    # Verdicts are falsy when failed, so test for None explicitly.
    limiting = next((v for v in candidates if not v.passed), None)
    if limiting is None:
        limiting = min(candidates, key=lambda v: v.bound - v.observed)
    significant = low is not None and low > 0
    details = {"fp32": float(fp32), "quant": float(quant), "drop": drop, "drop_rel": rel,
               "ci_low": low if low is not None else float("nan"), "ci_high": high if high is not None else float("nan"),
               "significant": significant}
    head = f"metric {metric}: fp32 {float(fp32):.4f}, int8 {float(quant):.4f}, drop {drop:+.4f} ({rel:+.2%})"
    if low is not None:
        head += f", CI [{low:+.4f}, {high:+.4f}]"
    if limiting.passed:
        return _replace_msg(limiting, f"{head}: passed, {limiting.gate} {limiting.observed:.4g} <= {limiting.bound:.4g}",
                            "nothing to do", details)
    if gate.require_significant and low is not None and not significant:
        msg = (f"{head}: passed, {limiting.gate} {limiting.observed:.4g} exceeds {limiting.bound:.4g} "
               f"({limiting.source}) but the CI includes 0 (not significant)")
        return Verdict(**{**_fields(limiting), "passed": True, "least_passing": None, "message": msg,
                          "remedy": "evaluate on more images to decide whether this drop is real", "details": details})
    note = "; no bootstrap interval, point estimate decides" if gate.require_significant and low is None else ""
    msg = f"{head}: FAILED, {limiting.gate} {limiting.observed:.4g} > {limiting.bound:.4g} ({limiting.source}){note}"
    return _replace_msg(limiting, msg, _REMEDIES["metric"], details)


def _interval(ci: Any) -> tuple[float | None, float | None]:
    if ci is None:
        return None, None
    if hasattr(ci, "ci_low"):
        return float(ci.ci_low), float(ci.ci_high)
    low, high = ci
    return float(low), float(high)


def _fields(v: Verdict) -> dict[str, Any]:
    return {f: getattr(v, f) for f in Verdict.__dataclass_fields__}


def _replace_msg(v: Verdict, message: str, remedy: str, details: Mapping[str, Any]) -> Verdict:
    return Verdict(**{**_fields(v), "message": message, "remedy": remedy, "details": dict(details)})


# --- expected failures ----------------------------------------------------------------------------
def is_expected_failure(v: Verdict, declared: Sequence[str]) -> bool:
    """A failed verdict a must-fail suite declares (``expect_reason`` / ``expect_also``). A golden written by this
    run (gate ``golden``: "run again to confirm") is never one, whatever check it belongs to."""
    return not v.passed and v.check in declared and v.gate != "golden"


def unexpected_remedy(v: Verdict, expect_reason: str | None) -> str:
    """What to do about a failure a must-fail suite did not declare."""
    if v.gate == "golden":
        return v.remedy
    return (f"{v.remedy}; if it is a direct consequence of the expected {expect_reason} failure, add "
            f"\"{v.check}\" to [suite] expect_also")


def missing_remedy(missing: Sequence[str], expect_reason: str | None) -> str:
    """What to do when declared failures did not happen."""
    if expect_reason in missing:
        return ("the defect this suite guards against is no longer detected: check the gate bounds, or set "
                "expect = 'pass' if the model was fixed")
    return (f"{', '.join(missing)} no longer fail{'s' if len(missing) == 1 else ''} with {expect_reason}: remove "
            f"{'it' if len(missing) == 1 else 'them'} from [suite] expect_also if that is right")


def resolve_expectation(verdicts: Sequence[Verdict], *, expect: str, expect_reason: str | None,
                        expect_also: Sequence[str] = ()) -> Verdict:
    """The suite's overall verdict. ``expect = "fail"`` is strict both ways: it passes only when verdicts of
    ``expect_reason`` and of every ``expect_also`` check failed and no other verdict failed. A suite that was
    expected to fail and passed is itself a failure (XPASS); so is a failure nobody declared, since a must-fail
    suite would otherwise hide every regression behind its one expected defect."""
    failed = [v for v in verdicts if not v.passed]
    if expect == "pass":
        worst = failed[0] if failed else None
        # `is not None`: a failed Verdict is falsy, so `if worst` would report "all passed" for a failure.
        msg = worst.message if worst is not None else f"all {len(verdicts)} gates passed"
        return Verdict(check="suite", gate="expect", passed=not failed, observed=float(len(failed)), bound=0.0,
                       op="<=", source="[suite] expect = 'pass'", least_passing=None, message=msg,
                       remedy=worst.remedy if worst is not None else "nothing to do",
                       details={"n_failed": len(failed)})
    declared = [c for c in (expect_reason, *expect_also) if c is not None]
    expected = [v for v in failed if is_expected_failure(v, declared)]
    unexpected = [v for v in failed if not is_expected_failure(v, declared)]
    missing = [c for c in declared if not any(v.check == c for v in expected)]
    hit = [v for v in expected if v.check == expect_reason]
    names = ", ".join(declared)
    if unexpected:
        v = unexpected[0]
        msg = (f"not expected: {v.message} (this must-fail suite expects only {names} to fail; "
               f"{len(unexpected)} other failed verdict{'s' if len(unexpected) != 1 else ''})")
        remedy = unexpected_remedy(v, expect_reason)
    elif missing:
        other = ", ".join(sorted({v.check for v in failed})) or "none"
        msg = (f"expected {', '.join(missing)} to fail, but {'it' if len(missing) == 1 else 'they'} passed "
               f"(failed checks: {other})")
        remedy = missing_remedy(missing, expect_reason)
    else:
        msg = f"expected failure confirmed: {expect_reason} failed as required ({hit[0].message})"
        if expect_also:
            msg += f"; its consequences {', '.join(expect_also)} failed as declared"
        remedy = "nothing to do"
    also = f", expect_also = {list(expect_also)!r}" if expect_also else ""
    return Verdict(check="suite", gate="expect", passed=not unexpected and not missing, observed=float(len(hit)),
                   bound=1.0, op=">=", source=f"[suite] expect = 'fail', expect_reason = {expect_reason!r}{also}",
                   least_passing=None, message=msg, remedy=remedy,
                   details={"n_failed": len(failed), "expected_hit": bool(hit), "missing": missing,
                            "unexpected": sorted({v.check for v in unexpected})})


# --- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GatesConfig:
    """The resolved ``[gates]`` table: every scalar gate with its source, overrides, metric drop gates.

    ``scalars`` holds gate key -> Bound (absent = off); ``explicit`` the keys the suite file set itself, so
    :meth:`to_dict` writes back exactly what the author wrote (plus ``preset``).
    """

    scalars: Mapping[str, Bound]
    layer_overrides: tuple[LayerOverride, ...] = ()
    metrics: Mapping[str, DropGate] = field(default_factory=dict)
    require_significant: bool = False
    preset: str | None = None
    explicit: frozenset[str] = frozenset()
    explicit_metrics: frozenset[str] = frozenset()

    def bound(self, key: str) -> Bound | None:
        return self.scalars.get(key)

    def layer_bound(self, metric: str) -> Bound | None:
        return self.scalars.get(f"layer_{layer_key(metric)}")

    @property
    def layers(self) -> ToleranceSet:
        """The one bound table of the layerwise comparison: the suite-wide ``layer_*`` bounds as the default,
        ``[gates.layer_overrides]`` as overrides (exact names first, then globs in file order, per metric)."""
        default = Tolerance({m: b for m in LAYER_METRICS if (b := self.layer_bound(m)) is not None})
        return ToleranceSet(default=default, overrides=tuple(
            (o.pattern, Tolerance(dict(o.bounds), skip=o.skip)) for o in self.layer_overrides))

    def check(self, key: str, observed: float, *, subject: str | None = None) -> Verdict:
        """Evaluate scalar gate ``key`` (direction and check name from :data:`SCALAR_GATES`)."""
        bound = self.scalars.get(key)
        if bound is None:
            raise ConfigError(f"Gate {key} is off in this suite", expected="a gate that is set",
                              remedy=f"set [gates] {key}, or skip the check")
        _, _, check, op = SCALAR_GATES[key]
        return _check(key, observed, bound, op, check=check, subject=subject)

    def effective(self) -> dict[str, dict[str, Any]]:
        """Every active gate with value and source: what a results file shows."""
        out: dict[str, dict[str, Any]] = {k: {"value": b.value, "source": b.source} for k, b in self.scalars.items()}
        for name, g in self.metrics.items():
            for key in ("drop_max", "drop_max_rel"):
                b = getattr(g, key)
                if b is not None:
                    out[f"metrics.{name}.{key}"] = {"value": b.value, "source": b.source,
                                                    "require_significant": g.require_significant}
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.preset:
            out["preset"] = self.preset
        for key in SCALAR_GATES:
            if key in self.explicit:
                out[key] = self.scalars[key].value
        if "require_significant" in self.explicit:
            out["require_significant"] = self.require_significant
        if self.layer_overrides:
            out["layer_overrides"] = {
                o.pattern: {**{layer_key(m): b.value for m, b in o.bounds.items()}, **({"skip": True} if o.skip else {})}
                for o in self.layer_overrides
            }
        metrics: dict[str, Any] = {}
        for name in self.explicit_metrics:
            g = self.metrics[name]
            entry: dict[str, Any] = {k: getattr(g, k).value for k in ("drop_max", "drop_max_rel") if getattr(g, k)}
            if g.require_significant != self.require_significant:
                entry["require_significant"] = g.require_significant
            metrics[name] = entry
        if metrics:
            out["metrics"] = dict(sorted(metrics.items()))
        return out

    @classmethod
    def from_table(cls, reader: TableReader | None, *, metric_names: Sequence[str] = (),
                   headline: str | None = None) -> GatesConfig:
        """Read ``[gates]`` (``reader`` None = table absent: all defaults). ``metric_names`` are the metrics
        this suite produces (valid ``[gates.metrics]`` keys); ``headline`` gets the default drop gate."""
        scalars: dict[str, Bound] = {k: Bound(float(v), src) for k, (v, src, _, _) in SCALAR_GATES.items()
                                     if v is not None}
        if reader is None:
            reader = TableReader({}, file=_NOFILE, table="gates")
        valid = ["preset", *SCALAR_GATES, "require_significant", "layer_overrides", "metrics"]
        reader.check_keys(valid)
        preset = reader.str("preset", default=None, choices=tuple(PRESETS))
        if preset is not None:
            for scope in ("layer", "output"):
                scalars[f"{scope}_cosine_min"] = PRESETS[preset].bounds["cosine"]
                scalars[f"{scope}_euclid_min"] = PRESETS[preset].bounds["euclid"]
        explicit = set()
        for key, (_, _, _, op) in SCALAR_GATES.items():
            if reader.has(key):
                if key == "calibration_overlap_max":
                    value = float(reader.int(key, low=0))
                else:
                    similarity = key.endswith(("cosine_min", "euclid_min"))
                    value = reader.float(key, low=0.0 if op == "<=" or similarity else None,
                                         high=1.0 if similarity else None)
                scalars[key] = Bound(value, f"{reader.file.name} [gates] {key}")
                explicit.add(key)
        require_sig = reader.bool("require_significant", default=False)
        if reader.has("require_significant"):
            explicit.add("require_significant")
        overrides = _read_overrides(reader.sub("layer_overrides"))
        metrics, explicit_metrics = _read_metric_gates(reader.sub("metrics"), metric_names, headline, require_sig)
        return cls(scalars=scalars, layer_overrides=overrides, metrics=metrics, require_significant=require_sig,
                   preset=preset, explicit=frozenset(explicit), explicit_metrics=frozenset(explicit_metrics))


# A suite without a [gates] table reads an empty one; no key means no error, so this name is never shown.
_NOFILE = Path("<no [gates] table>")


def _read_overrides(reader: TableReader | None) -> tuple[LayerOverride, ...]:
    if reader is None:
        return ()
    out = []
    for pattern in reader.data:
        sub = reader.sub(pattern)
        assert sub is not None
        keys = [layer_key(m) for m in LAYER_METRICS] + ["skip"]
        sub.check_keys(keys, hint='e.g. "conv_dw_*" = { cosine_min = 0.95 }')
        bounds = {}
        for m in LAYER_METRICS:
            if sub.has(layer_key(m)):
                low, high = (0.0, None) if m == "max_abs" else (None, None if m == "sqnr_db" else 1.0)
                bounds[m] = Bound(sub.float(layer_key(m), low=low, high=high),
                                  f"{reader.file.name} [gates.layer_overrides] {pattern!r}")
        skip = sub.bool("skip", default=False)
        if not bounds and not skip:
            raise sub.error("", "is empty", expected=f"at least one of {', '.join(keys)}")
        out.append(LayerOverride(pattern=pattern, bounds=bounds, skip=skip))
    return tuple(out)


def _read_metric_gates(reader: TableReader | None, names: Sequence[str], headline: str | None,
                       require_sig: bool) -> tuple[dict[str, DropGate], set[str]]:
    gates: dict[str, DropGate] = {}
    if headline is not None:
        value, src = _METRIC_DROP_DEFAULT
        gates[headline] = DropGate(drop_max_rel=Bound(value, src), require_significant=require_sig)
    if reader is None:
        return gates, set()
    reader.check_keys(names, hint="metric names depend on [suite] task, [data] format and [metrics] topk")
    for name in reader.data:
        sub = reader.sub(name)
        assert sub is not None
        sub.check_keys(["drop_max", "drop_max_rel", "require_significant"])
        src = f"{reader.file.name} [gates.metrics] {name}"
        absolute = sub.float("drop_max", default=None, low=0.0)
        rel = sub.float("drop_max_rel", default=None, low=0.0, high=1.0)
        if absolute is None and rel is None:
            raise sub.error("drop_max", "missing", expected="drop_max and/or drop_max_rel",
                            remedy=f"{name} = {{ drop_max = 0.02 }} (absolute) or {{ drop_max_rel = 0.05 }}")
        gates[name] = DropGate(
            drop_max=Bound(absolute, f"{src}.drop_max") if absolute is not None else None,
            drop_max_rel=Bound(rel, f"{src}.drop_max_rel") if rel is not None else None,
            require_significant=sub.bool("require_significant", default=require_sig),
        )
    return gates, set(reader.data)
