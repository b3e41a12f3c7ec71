"""Per-tensor comparison statistics, tolerances with provenance, and layerwise results."""

from harness.compare.layerwise import Divergence, LayerRow, LayerwiseComparison, LayerwiseResult, predecessor_map
from harness.compare.stats import (
    BmrtResult,
    TensorStats,
    TensorStatsResult,
    bmrt_allclose,
    raise_if_nonfinite,
    tensor_stats,
)
from harness.compare.tolerance import PRESETS, Tolerance, ToleranceSet, ToleranceVerdict, parse_tolerance_spec

__all__ = [
    "PRESETS",
    "BmrtResult",
    "Divergence",
    "LayerRow",
    "LayerwiseComparison",
    "LayerwiseResult",
    "TensorStats",
    "TensorStatsResult",
    "Tolerance",
    "ToleranceSet",
    "ToleranceVerdict",
    "bmrt_allclose",
    "parse_tolerance_spec",
    "predecessor_map",
    "raise_if_nonfinite",
    "tensor_stats",
]
