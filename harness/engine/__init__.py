"""Running a suite: stages (data, fp32, calibration, quantized, metrics, golden) and the checks on them.

The Python API behind both ``quant-harness run`` and the pytest plugin (and the ``quant_suite`` fixture)::

    from harness.engine import run_suite
    outcome = run_suite("suites/detector_ncnn_int8.toml")
    outcome.status, outcome.checks["layerwise"].verdicts, outcome.entry["first_divergent"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.engine.checks import run_check
from harness.engine.results import CheckResult, items_for, suite_entry
from harness.engine.stages import Progress, SuiteStages
from harness.suite import Suite, load_suite

__all__ = ["CheckResult", "SuiteOutcome", "SuiteStages", "items_for", "run_check", "run_suite"]


@dataclass
class SuiteOutcome:
    """Every check of one suite and its ``results.json`` entry (``entry["status"]``: passed, failed, ...)."""

    suite: Suite
    checks: dict[str, CheckResult]
    entry: dict[str, Any]

    @property
    def status(self) -> str:
        return self.entry["status"]

    @property
    def ok(self) -> bool:
        """The outcome was as the suite expects (passed, or a strict expected failure that failed)."""
        return bool(self.entry["outcome_ok"])


def run_suite(suite: Suite | str | Path, *, items: Iterable[str] | None = None, golden_root: Path | None = None,
              golden_update: bool = False, threads: int | None = None, progress: Progress | None = None,
              stages: SuiteStages | None = None, previous: dict[str, Any] | None = None) -> SuiteOutcome:
    """Run ``items`` (default: all of the suite's) and build its results entry."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    stages = stages or SuiteStages(suite, golden_root=golden_root, golden_update=golden_update, threads=threads,
                                   progress=progress)
    checks = {item: run_check(stages, item) for item in (items or items_for(suite))}
    entry = suite_entry(suite, [json.loads(c.payload(suite)) for c in checks.values()], previous)
    return SuiteOutcome(suite, checks, entry)
