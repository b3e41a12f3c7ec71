"""Read and validate ``results.json`` (docs/results.md) before anything is rendered.

Why validate first: the report is rendered from this file alone, often long after the run, sometimes
by a newer harness. A truncated file, a different ``format_version`` or a suite that is not an object
must stop with a message that says which file and what to do, not with a ``KeyError`` from deep inside
a plot. Missing *pieces* (a check that did not run, ``metrics: null``) are normal and are left to the
renderer, which shows them as "not run"; only wrong *types* of container are refused here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import DataError

#: ``format_version`` values this reader understands.
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)

_SUITE_LISTS = ("checks", "layers", "histograms", "calibration_drift", "probes")
_SUITE_OBJECTS = ("verdict", "golden", "metrics", "first_divergent", "preprocess", "quant", "gates", "previous",
                  "timing_s")


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results file (or the ``results.json`` inside a directory) and validate it.

    Raises ``DataError`` for a missing file, a file that is not JSON, or an unknown format.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise DataError(
            f"Got no results file at {p}",
            expected="the results.json a run writes (reports/results.json by default)",
            remedy="run `quant-harness run` (or pytest) first, or pass the file from its --report-dir",
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {p}: {exc}", expected="a UTF-8 JSON file",
                        remedy="check the path and permissions") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            expected="the JSON document a run writes",
            remedy="the run may have been interrupted or the file edited; rerun the suites",
        ) from exc
    return validate_results(data, source=str(p))


def validate_results(data: Any, *, source: str = "results") -> dict[str, Any]:
    """Check the structure the renderer relies on; return ``data`` unchanged when it is usable."""
    if not isinstance(data, Mapping):
        raise DataError(f"{source} holds a JSON {type(data).__name__}", expected="a JSON object at the top level",
                        remedy="pass the results.json a run wrote")
    version = data.get("format_version")
    if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:  # bool is an int: refuse it too
        known = ", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))
        raise DataError(
            f"{source} has format_version {version!r}",
            expected=f"format_version {known} (the only one this harness reads)",
            remedy="render it with the harness version that wrote it, or rerun the suites with this one",
        )
    suites = data.get("suites")
    if not isinstance(suites, list):
        raise DataError(f"{source}: 'suites' is {type(suites).__name__}", expected="a list of suite objects",
                        remedy="rerun the suites; the file was not written by a run")
    for i, suite in enumerate(suites):
        _validate_suite(suite, f"{source}: suites[{i}]")
    return dict(data)


def _validate_suite(suite: Any, where: str) -> None:
    if not isinstance(suite, Mapping):
        raise DataError(f"{where} is a JSON {type(suite).__name__}", expected="an object per suite",
                        remedy="rerun the suites")
    if not isinstance(suite.get("name"), str):
        raise DataError(f"{where} has no string 'name'", expected="every suite to carry its [suite] name",
                        remedy="rerun the suites")
    where = f"{where} ({suite['name']!r})"
    for key in _SUITE_LISTS:
        if suite.get(key) is not None and not isinstance(suite[key], list):
            raise DataError(f"{where}: '{key}' is {type(suite[key]).__name__}", expected="a list (or null)",
                            remedy="rerun the suites; see docs/results.md for the schema")
    for key in _SUITE_OBJECTS:
        if suite.get(key) is not None and not isinstance(suite[key], Mapping):
            raise DataError(f"{where}: '{key}' is {type(suite[key]).__name__}", expected="an object (or null)",
                            remedy="rerun the suites; see docs/results.md for the schema")
    for key in ("layers", "checks"):
        for j, row in enumerate(suite.get(key) or []):
            if not isinstance(row, Mapping):
                raise DataError(f"{where}: {key}[{j}] is {type(row).__name__}", expected="an object per row",
                                remedy="rerun the suites")
