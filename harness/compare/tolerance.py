"""The one table of per-tensor bounds: a default, presets, glob and exact-name overrides, each bound sourced.

Why one table: the layerwise gate, the first-divergent-layer rule, ``quant-harness compare`` and the report
must agree on which tensor fails and why. Polygraphy's comparator has one tolerance lookup with a default
key; so does this module, and ``harness.gates`` builds the suite's ``[gates]`` layer bounds into it.

Why provenance: a bound such as "cosine >= 0.97" is only meaningful next to where it came from (tpu-mlir's
tool default, a production regression for one model, a team decision), so every :class:`Bound` carries
``source`` and every failure message shows it.

Bounds: ``cosine``, ``euclid`` (tpu-mlir euclid-similarity) and ``sqnr_db`` are lower bounds; ``max_abs``,
``mae`` and ``nmse`` are upper bounds. A bound that is absent is not checked. A NaN statistic (nothing finite
to compare) never passes, and a tensor with NaN/Inf values fails with a ``finite`` failure.

Lookup, per bound key (so ``"conv_dw_*" = { cosine_min = 0.95 }`` relaxes cosine without switching SQNR off):
an exact-name override, then glob overrides (``fnmatch``, case-sensitive) in insertion order, the first that
sets that key winning, then the default. The first matching override with ``skip`` (exact names first)
removes the tensor from checking altogether.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

from harness.compare.stats import TensorStatsResult
from harness.errors import ConfigError

__all__ = ["BOUND_KEYS", "LOWER_BOUNDS", "UPPER_BOUNDS", "PRESETS", "Bound", "BoundFailure", "Tolerance",
           "ToleranceSet", "ToleranceVerdict", "deficit", "parse_tolerance_spec"]

#: bound key -> TensorStatsResult field. Lower bounds: the statistic must be >= the bound.
LOWER_BOUNDS = {"cosine": "cosine", "euclid": "euclid_similarity", "sqnr_db": "sqnr_db"}
#: Upper bounds: the statistic must be <= the bound.
UPPER_BOUNDS = {"max_abs": "max_abs_error", "mae": "mae", "nmse": "nmse"}
BOUND_KEYS = tuple(LOWER_BOUNDS) + tuple(UPPER_BOUNDS)
_FINITE = "finite"


def stat_of(stats: TensorStatsResult, key: str) -> float:
    """The statistic a bound key reads."""
    return float(getattr(stats, LOWER_BOUNDS.get(key) or UPPER_BOUNDS[key]))


def deficit(key: str, value: float) -> float:
    """How far ``value`` of statistic ``key`` is from a perfect match, on a scale where deficits of
    independent errors roughly add: ``1 - s`` for the similarities, the noise power ``10^(-dB/10)`` (NMSE)
    for SQNR, the value itself for the error statistics. NaN counts as infinitely far."""
    if math.isnan(value):
        return math.inf
    if key in ("cosine", "euclid"):
        return 1.0 - value
    if key == "sqnr_db":
        return 0.0 if value == math.inf else (math.inf if value == -math.inf else 10.0 ** (-value / 10.0))
    return value


@dataclass(frozen=True)
class Bound:
    """A bound's value and where it came from (``suite.toml [gates] key``, a preset, a documented default)."""

    value: float
    source: str

    @property
    def from_suite(self) -> bool:
        return not self.source.startswith(("default", "preset"))


@dataclass(frozen=True)
class BoundFailure:
    """One bound a tensor did not meet. ``key`` is a bound key or ``"finite"`` (NaN/Inf values present)."""

    key: str
    observed: float
    bound: Bound

    @property
    def op(self) -> str:
        return "<=" if self.key in UPPER_BOUNDS or self.key == _FINITE else ">="

    @property
    def severity(self) -> float:
        """How many times the allowed deficit the observed one is (> 1 for a failure; inf for NaN/Inf)."""
        if self.key == _FINITE:
            return math.inf
        allowed = deficit(self.key, self.bound.value)
        seen = deficit(self.key, self.observed)
        return math.inf if allowed <= 0 else seen / allowed

    def __str__(self) -> str:
        if self.key == _FINITE:
            return f"{int(self.observed)} non-finite value(s)"
        return f"{self.key}={self.observed:.6g} (need {self.op} {self.bound.value:g})"


@dataclass(frozen=True)
class Tolerance:
    """Bounds for one tensor, each with its source; ``skip`` = not checked at all."""

    bounds: Mapping[str, Bound] = field(default_factory=dict)
    skip: bool = False

    @classmethod
    def of(cls, *, source: str = "user", skip: bool = False, **values: float | None) -> Tolerance:
        """``Tolerance.of(cosine=0.99, euclid=0.9, source="team")``: every bound from one source."""
        unknown = sorted(set(values) - set(BOUND_KEYS))
        if unknown:
            raise ConfigError(f"Unknown tolerance bound(s) {unknown}", expected=f"some of {', '.join(BOUND_KEYS)}")
        return cls({k: Bound(float(v), source) for k, v in values.items() if v is not None}, skip=skip)

    def value(self, key: str) -> float | None:
        b = self.bounds.get(key)
        return None if b is None else b.value

    def values(self) -> dict[str, float]:
        return {k: self.bounds[k].value for k in BOUND_KEYS if k in self.bounds}

    @property
    def source(self) -> str:
        sources = list(dict.fromkeys(b.source for b in self.bounds.values()))
        return "; ".join(sources) if sources else "no bounds"

    def check(self, name: str, stats: TensorStatsResult) -> ToleranceVerdict:
        failures: list[BoundFailure] = []
        observed: dict[str, float] = {}
        if not self.skip:
            for key in BOUND_KEYS:
                if key not in self.bounds:
                    continue
                bound, value = self.bounds[key], stat_of(stats, key)
                observed[key] = value
                ok = value >= bound.value if key in LOWER_BOUNDS else value <= bound.value
                if math.isnan(value) or not ok:
                    failures.append(BoundFailure(key, value, bound))
            if stats.nonfinite_count:
                failures.append(BoundFailure(_FINITE, float(stats.nonfinite_count),
                                             Bound(0.0, "harness: a compared tensor must be finite")))
        return ToleranceVerdict(name=name, tolerance=self, stats=stats, failures=tuple(failures),
                                min_passing=observed)

    def describe(self) -> str:
        if self.skip:
            return "skipped"
        parts = " ".join(f"{k}={v:g}" for k, v in self.values().items())
        return f"{parts} ({self.source})"


@dataclass(frozen=True)
class ToleranceVerdict:
    """One tensor checked against its bounds; truthy when it passed. ``min_passing[key]`` is the loosest bound
    that would have passed (the observed statistic itself: Polygraphy's habit)."""

    name: str
    tolerance: Tolerance
    stats: TensorStatsResult
    failures: tuple[BoundFailure, ...]
    min_passing: Mapping[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    @property
    def worst(self) -> BoundFailure | None:
        """The failure furthest beyond its bound (relative to what the bound allows)."""
        return max(self.failures, key=lambda f: f.severity) if self.failures else None


_PRODUCTION = "tpu-mlir production int8 regression"
#: Presets (cosine, euclid-similarity), DESIGN.md "Layer metrics": tpu-mlir's defaults and regressions.
PRESETS: dict[str, Tolerance] = {
    "tpu-mlir-tool": Tolerance.of(cosine=0.99, euclid=0.99, source="preset tpu-mlir-tool: tpu-mlir tool default 0.99/0.99 (npz_tool compare)"),
    "tpu-mlir-deploy": Tolerance.of(cosine=0.8, euclid=0.5, source="preset tpu-mlir-deploy: tpu-mlir deploy default 0.8/0.5 (model_deploy)"),
    "resnet18": Tolerance.of(cosine=0.97, euclid=0.78, source=f"preset resnet18: {_PRODUCTION}, resnet18"),
    "mobilenet_v2": Tolerance.of(cosine=0.95, euclid=0.69, source=f"preset mobilenet_v2: {_PRODUCTION}, mobilenet_v2"),
    "ssd300": Tolerance.of(cosine=0.98, euclid=0.85, source=f"preset ssd300: {_PRODUCTION}, ssd300"),
    "retinaface": Tolerance.of(cosine=0.94, euclid=0.67, source=f"preset retinaface: {_PRODUCTION}, retinaface"),
    "ultraface": Tolerance.of(cosine=0.93, euclid=0.64, source=f"preset ultraface: {_PRODUCTION}, ultraface"),
}
#: ``quant-harness compare``'s default (a tool comparing two dumps, as tpu-mlir's npz_tool does).
DEFAULT_PRESET = "tpu-mlir-tool"


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True)
class ToleranceSet:
    """The table: a default and ordered ``(pattern, Tolerance)`` overrides (see the module docstring)."""

    default: Tolerance = PRESETS[DEFAULT_PRESET]
    overrides: tuple[tuple[str, Tolerance], ...] = ()

    def matching(self, name: str) -> list[tuple[str, Tolerance]]:
        """Overrides that apply to ``name``: exact names first, then globs in insertion order."""
        exact = [(p, t) for p, t in self.overrides if not is_glob(p) and p == name]
        globs = [(p, t) for p, t in self.overrides if is_glob(p) and fnmatchcase(name, p)]
        return exact + globs

    def for_tensor(self, name: str) -> Tolerance:
        """The resolved bounds of ``name`` (per key: exact, first glob that sets it, default)."""
        matching = self.matching(name)
        if matching and matching[0][1].skip:
            return Tolerance(skip=True)
        bounds: dict[str, Bound] = {}
        for key in BOUND_KEYS:
            chosen = next((t.bounds[key] for _, t in matching if key in t.bounds), self.default.bounds.get(key))
            if chosen is not None:
                bounds[key] = chosen
        return Tolerance(bounds)

    def check(self, name: str, stats: TensorStatsResult) -> ToleranceVerdict:
        return self.for_tensor(name).check(name, stats)

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """Override patterns that match none of ``names`` (a typo in a suite file)."""
        names = list(names)
        return [p for p, _ in self.overrides
                if not any((fnmatchcase(n, p) if is_glob(p) else n == p) for n in names)]


def parse_tolerance_spec(specs: Iterable[str], *, base: ToleranceSet | None = None,
                         source: str = "command line") -> ToleranceSet:
    """Parse ``[GLOB:]KEY=VALUE`` strings (``cosine=0.99``, ``conv*:sqnr_db=20``) or ``preset=NAME``.

    Bounds given without a glob *replace* the default's bounds as a whole (so ``cosine=0.9`` does not silently
    keep the preset's euclid bound); bounds for one glob accumulate, and fall through per key to the default.
    """
    base = base or ToleranceSet()
    default_bounds: dict[str, float] = {}
    default_preset: Tolerance | None = None
    per_glob: dict[str, dict[str, float]] = {}
    for spec in specs:
        glob, _, assignment = spec.rpartition(":") if ":" in spec else ("", "", spec)
        key, sep, value = assignment.partition("=")
        key = key.strip()
        if key == "preset" and not glob:
            if value not in PRESETS:
                raise ConfigError(f"Unknown tolerance preset {value!r}", expected=f"one of {sorted(PRESETS)}")
            default_preset = PRESETS[value]
            continue
        if not sep or key not in BOUND_KEYS:
            raise ConfigError(f"Bad tolerance {spec!r}",
                              expected=f"[GLOB:]KEY=VALUE with KEY one of {', '.join(BOUND_KEYS)}, or preset=NAME",
                              remedy="for example --tolerance cosine=0.99 or --tolerance 'conv*:sqnr_db=20'")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"Bad tolerance value in {spec!r}", expected="a number") from None
        (per_glob.setdefault(glob, {}) if glob else default_bounds)[key] = number
    default = default_preset or base.default
    if default_bounds:
        default = Tolerance.of(**default_bounds, source=source)  # type: ignore[arg-type]
    overrides = tuple((g, Tolerance.of(**b, source=source)) for g, b in per_glob.items()) + base.overrides  # type: ignore[arg-type]
    return replace(base, default=default, overrides=overrides)
