"""Per-tensor tolerances: a default plus ``fnmatch`` glob overrides, each with its provenance.

Why provenance: a bound such as "cosine >= 0.97" is only meaningful next to where it came from
(tpu-mlir's tool default, a production regression for one model, a team decision). Every
``Tolerance`` carries ``source`` and reports show it.

Bounds: ``cosine``, ``euclid`` (tpu-mlir euclid-similarity) and ``sqnr_db`` are lower bounds;
``max_abs``, ``mae`` and ``nmse`` are upper bounds. A bound left ``None`` is not checked.

Lookup (Polygraphy style, a default key plus per-tensor keys): the *first* override whose glob
matches the tensor name wins, in insertion order; otherwise the default. Put specific globs first.

``check`` returns a ``ToleranceVerdict``: truthy when it passes, carrying the statistics and, for
every bound, the loosest value that would have passed (the observed statistic itself).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from harness.compare.stats import TensorStatsResult
from harness.errors import ConfigError

__all__ = ["LOWER_BOUNDS", "UPPER_BOUNDS", "PRESETS", "Tolerance", "ToleranceSet", "ToleranceVerdict",
           "parse_tolerance_spec"]

#: bound key -> TensorStatsResult field. Lower bounds: the statistic must be >= the bound.
LOWER_BOUNDS = {"cosine": "cosine", "euclid": "euclid_similarity", "sqnr_db": "sqnr_db"}
#: Upper bounds: the statistic must be <= the bound.
UPPER_BOUNDS = {"max_abs": "max_abs_error", "mae": "mae", "nmse": "nmse"}
BOUND_KEYS = tuple(LOWER_BOUNDS) + tuple(UPPER_BOUNDS)


@dataclass(frozen=True)
class Tolerance:
    """Bounds for one tensor and where they came from."""

    cosine: float | None = None
    euclid: float | None = None
    sqnr_db: float | None = None
    max_abs: float | None = None
    mae: float | None = None
    nmse: float | None = None
    source: str = "user"

    def bounds(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in BOUND_KEYS if getattr(self, k) is not None}

    def check(self, name: str, stats: TensorStatsResult) -> ToleranceVerdict:
        failures: list[str] = []
        observed: dict[str, float] = {}
        for key, bound in self.bounds().items():
            value = float(getattr(stats, LOWER_BOUNDS.get(key) or UPPER_BOUNDS[key]))
            observed[key] = value
            # NaN (nothing finite to compare) never passes: silence must not look like success.
            ok = (value >= bound) if key in LOWER_BOUNDS else (value <= bound)
            if math.isnan(value) or not ok:
                op = ">=" if key in LOWER_BOUNDS else "<="
                failures.append(f"{key}={value:.6g} (need {op} {bound:g})")
        if stats.nonfinite_count:
            failures.append(f"{stats.nonfinite_count} non-finite value(s)")
        return ToleranceVerdict(name=name, tolerance=self, stats=stats, failures=tuple(failures),
                                min_passing=observed)

    def describe(self) -> str:
        parts = " ".join(f"{k}={v:g}" for k, v in self.bounds().items())
        return f"{parts} ({self.source})"


@dataclass(frozen=True)
class ToleranceVerdict:
    """One tensor checked against its tolerance. ``min_passing[key]`` is the loosest bound that
    would have passed (for a lower bound, the observed value; for an upper bound likewise)."""

    name: str
    tolerance: Tolerance
    stats: TensorStatsResult
    failures: tuple[str, ...]
    min_passing: Mapping[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed


#: Defaults with provenance (DESIGN.md, "Layer metrics"): cosine / euclid-similarity.
PRESETS: dict[str, Tolerance] = {
    "tpu-mlir-tool": Tolerance(cosine=0.99, euclid=0.99, source="tpu-mlir tool default 0.99/0.99"),
    "tpu-mlir-deploy": Tolerance(cosine=0.8, euclid=0.5, source="tpu-mlir deploy default 0.8/0.5"),
    "resnet18": Tolerance(cosine=0.97, euclid=0.78, source="production regression resnet18 0.97/0.78"),
    "mobilenet_v2": Tolerance(cosine=0.95, euclid=0.69, source="production regression mobilenet_v2 0.95/0.69"),
    "ssd300": Tolerance(cosine=0.98, euclid=0.85, source="production regression ssd300 0.98/0.85"),
    "retinaface": Tolerance(cosine=0.94, euclid=0.67, source="production regression retinaface 0.94/0.67"),
    "ultraface": Tolerance(cosine=0.93, euclid=0.64, source="production regression ultraface 0.93/0.64"),
}
DEFAULT_PRESET = "tpu-mlir-tool"


@dataclass(frozen=True)
class ToleranceSet:
    """A default tolerance and ordered glob overrides (first match wins)."""

    default: Tolerance = PRESETS[DEFAULT_PRESET]
    overrides: tuple[tuple[str, Tolerance], ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Tolerance], *, default_key: str = "default") -> ToleranceSet:
        """``{"default": Tolerance(...), "conv*": Tolerance(...)}`` -> ToleranceSet (key order kept)."""
        default = mapping.get(default_key, PRESETS[DEFAULT_PRESET])
        return cls(default=default, overrides=tuple((k, v) for k, v in mapping.items() if k != default_key))

    def for_tensor(self, name: str) -> Tolerance:
        for pattern, tol in self.overrides:
            if fnmatch.fnmatchcase(name, pattern):
                return tol
        return self.default

    def check(self, name: str, stats: TensorStatsResult) -> ToleranceVerdict:
        return self.for_tensor(name).check(name, stats)


def parse_tolerance_spec(specs: Iterable[str], *, base: ToleranceSet | None = None,
                         source: str = "command line") -> ToleranceSet:
    """Parse ``[GLOB:]KEY=VALUE`` strings (``cosine=0.99``, ``conv*:sqnr_db=20``) or
    ``preset=NAME`` into a ToleranceSet.

    Bounds given without a glob *replace* the default's bounds as a whole (so ``cosine=0.9`` does
    not silently keep the preset's euclid bound); bounds for one glob accumulate.
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
        default = Tolerance(**default_bounds, source=source)
    overrides = tuple((g, Tolerance(**b, source=source)) for g, b in per_glob.items()) + base.overrides
    return replace(base, default=default, overrides=overrides)
