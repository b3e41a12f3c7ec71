"""Check results and ``results.json`` (schema: docs/results.md).

A suite's checks produce :class:`CheckResult` objects; each carries its verdicts and the report sections it
computed (the layer table, the metrics, ...). They travel as plain JSON payloads, because under pytest-xdist
the checks run in worker processes and only the controller writes ``results.json``: the payloads ride in
each test report's ``user_properties``. :func:`suite_entry` merges one suite's payloads, :func:`build_results`
the whole run, and :func:`write_results` writes the file atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.gates import Verdict, resolve_expectation
from harness.suite import Suite

FORMAT_VERSION = 1
log = logging.getLogger(__name__)
#: pytest items of a suite, in run order, and the verdict checks each one carries.
ITEM_CHECKS: dict[str, tuple[str, ...]] = {
    "leakage": ("leakage",),
    "input-parity": ("input-parity",),
    "fp32-golden": ("fp32-golden",),
    "finite": ("finite",),
    "layerwise": ("layerwise",),
    "outputs": ("output", "bmrt"),
    "metrics": ("metric", "metric-golden"),
    "calibration-drift": ("calibration-drift",),
    "reference": ("reference",),
}


def items_for(suite: Suite) -> list[str]:
    """The items a suite runs (``layers`` suites have no task metrics; ``reference`` needs a reference model)."""
    return [i for i in ITEM_CHECKS if not (i == "metrics" and suite.task == "layers")
            and not (i == "reference" and suite.model.reference is None)]


def item_of_check(check: str) -> str:
    return next(item for item, checks in ITEM_CHECKS.items() if check in checks)


@dataclass
class CheckResult:
    """One item's outcome: verdicts, or the error that kept it from running, and its report sections.

    ``error`` is a :class:`HarnessError` (the user can fix it) or any other exception (a harness defect, or
    onnxruntime failing on a model the harness built); either way the suite is an ``error``, and the other
    suites of the run are still reported.
    """

    item: str
    verdicts: list[Verdict] = field(default_factory=list)
    error: Exception | None = None
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and all(v.passed for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item, "passed": self.passed, "verdicts": [v.to_dict() for v in self.verdicts],
                "error": None if self.error is None else error_record(self.error)}

    def payload(self, suite: Suite) -> str:
        """JSON text for the controller (pytest-xdist ``user_properties``), which reloads the suite file."""
        return json.dumps(clean({"suite": suite.name, "suite_file": str(suite.path), "check": self.to_dict(),
                                 "sections": self.sections}))


#: Remedy of an exception that is not a HarnessError: nothing in the suite file explains it.
INTERNAL_ERROR_REMEDY = ("this is a defect of the harness, not of the suite: report it with the suite file and the "
                         "traceback in results.json (suites[].checks[].error.traceback)")
_TRACEBACK_FRAMES = 6


def error_record(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", "remedy"}`` of a check's error, plus ``"traceback"`` (the innermost frames) for an
    exception that is not a :class:`HarnessError`."""
    if isinstance(exc, HarnessError):
        return {"type": type(exc).__name__, "message": str(exc), "remedy": exc.remedy}
    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__)[-_TRACEBACK_FRAMES:])
    return {"type": type(exc).__name__, "message": f"unexpected {type(exc).__name__}: {exc}",
            "remedy": INTERNAL_ERROR_REMEDY,
            "traceback": "".join(frames) + "".join(traceback.format_exception_only(type(exc), exc))}

    def payload(self, suite: Suite) -> str:
        """JSON text for the controller (pytest-xdist ``user_properties``), which reloads the suite file."""
        return json.dumps(clean({"suite": suite.name, "suite_file": str(suite.path), "check": self.to_dict(),
                                 "sections": self.sections}))


def clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return clean(obj.item())
    return obj


def _verdict_from_dict(d: Mapping[str, Any]) -> Verdict:
    nan = float("nan")
    return Verdict(check=d["check"], gate=d["gate"], passed=bool(d["passed"]),
                   observed=nan if d["observed"] is None else d["observed"],
                   bound=nan if d["bound"] is None else d["bound"], op=d["op"], source=d["source"],
                   least_passing=d.get("least_passing"), message=d["message"], remedy=d["remedy"],
                   subject=d.get("subject"), details=d.get("details") or {})


def suite_status(suite: Suite, checks: Sequence[Mapping[str, Any]]) -> tuple[str, Verdict]:
    """``passed`` / ``failed`` / ``xfailed`` / ``xpassed`` / ``error`` and the suite verdict."""
    verdicts = [_verdict_from_dict(v) for c in checks for v in c["verdicts"]]
    errors = [c for c in checks if c.get("error")]
    verdict = resolve_expectation(verdicts, expect=suite.expect, expect_reason=suite.expect_reason,
                                  expect_also=suite.expect_also)
    if errors:  # a check that could not run is an error even where a failure is expected: it hid nothing less
        status = "error"
        first = errors[0]
        verdict = Verdict(check="suite", gate="expect", passed=False, observed=float(len(errors)), bound=0.0,
                          op="<=", source="harness: every check must run", least_passing=None,
                          message=f"{first['item']} could not run: {first['error']['message'].splitlines()[0]}",
                          remedy=first["error"].get("remedy") or "see the error message")
    elif suite.expect == "fail":
        # xpassed: nothing failed although the suite exists to fail; any other failure (one nobody declared, or a
        # declared consequence that no longer follows) is a plain failure.
        nothing_failed = not any(not v.passed for v in verdicts)
        status = "xfailed" if verdict.passed else ("xpassed" if nothing_failed else "failed")
    else:
        status = "passed" if verdict.passed else "failed"
    return status, verdict


def suite_static(suite: Suite) -> dict[str, Any]:
    """What the suite file says, before anything ran."""
    data = suite.to_dict()
    try:
        profile = suite.quant.resolve()
        resolved = {"name": profile.name, "description": profile.description,
                    "activation_method": profile.activation_method, "placement": profile.placement,
                    "float_layers": sorted(profile.float_layers),
                    "high_precision_layers": sorted(profile.high_precision_layers)}
    except HarnessError as exc:  # pragma: no cover - validated at load time
        resolved = {"error": str(exc)}
    return {
        "name": suite.name, "task": suite.task, "description": suite.description,
        "suite_file": display_path(suite.path), "profile": suite.quant.profile, "expect": suite.expect,
        "expect_reason": suite.expect_reason, "expect_also": list(suite.expect_also),
        "preprocess": data["preprocess"],
        "quant": {**data["quant"], "resolved": resolved}, "gates": suite.gates.effective(),
    }


def suite_entry(suite: Suite, payloads: Iterable[Mapping[str, Any]],
                previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``suites[]`` object from the payloads of its items (any order; item order restored)."""
    order = list(ITEM_CHECKS)
    payloads = sorted(payloads, key=lambda p: order.index(p["check"]["item"]) if p["check"]["item"] in order else 99)
    checks = [p["check"] for p in payloads]
    entry: dict[str, Any] = {**suite_static(suite), "golden": None, "metrics": None, "layers": [],
                             "first_divergent": None, "histograms": [], "calibration_drift": [], "probes": [],
                             "timing_s": {}}
    for p in payloads:
        for key, value in p.get("sections", {}).items():
            if key == "timing_s":
                entry["timing_s"].update(value)
            else:
                entry[key] = value
    status, verdict = suite_status(suite, checks)
    entry.update(status=status, outcome_ok=status in ("passed", "xfailed"), verdict=verdict.to_dict(),
                 checks=checks, previous=_previous_of(suite.name, previous))
    return clean(entry)


def error_entry(suite: Suite, exc: Exception, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``suites[]`` object of a suite whose run raised ``exc`` outside its checks (status ``error``): the
    run goes on with the other suites, and this one is reported with the exception."""
    payload = {"check": CheckResult("run", error=exc).to_dict(), "sections": {}}
    try:
        return suite_entry(suite, [payload], previous)
    except Exception:  # noqa: BLE001 - building the entry may be what failed: report the bare minimum
        log.exception("could not build the results entry of suite %s", suite.name)
        verdict = {"check": "suite", "gate": "expect", "passed": False, "observed": 1.0, "bound": 0.0, "op": "<=",
                   "source": "harness: every check must run", "least_passing": None,
                   "message": f"suite {suite.name} crashed: {payload['check']['error']['message']}",
                   "remedy": INTERNAL_ERROR_REMEDY, "subject": None, "details": {}}
        return clean({"name": suite.name, "task": suite.task, "suite_file": display_path(suite.path),
                      "profile": suite.quant.profile, "expect": suite.expect, "status": "error",
                      "outcome_ok": False, "verdict": verdict, "checks": [payload["check"]], "layers": [],
                      "metrics": None, "first_divergent": None, "golden": None, "previous": None})


def _previous_of(name: str, previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not previous:
        return None
    for s in previous.get("suites", []):
        if s.get("name") == name:
            m = s.get("metrics") or {}
            return {"status": s.get("status"), "headline": m.get("headline"), "fp32": m.get("fp32"),
                    "quantized": m.get("quantized")}
    return None


def read_previous(path: Path) -> dict[str, Any] | None:
    """The results file about to be replaced, for trends; None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format_version") == FORMAT_VERSION else None


def environment() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime

    try:
        import cv2

        opencv = cv2.__version__
    except ImportError:  # pragma: no cover
        opencv = "missing"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": numpy.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opencv": opencv}


def build_results(entries: list[dict[str, Any]], *, command: str, previous: Mapping[str, Any] | None,
                  previous_path: Path | None = None,
                  skipped: Iterable[Mapping[str, str]] = ()) -> dict[str, Any]:
    """The whole results file. ``skipped``: ``{"suite_file", "reason"}`` of suites that could not run here
    (their data sits behind an unset environment variable); they do not count against ``passed``."""
    from harness import __version__

    return clean({
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "harness_version": __version__, "environment": environment(), "command": command,
        "passed": all(e["outcome_ok"] for e in entries),
        "previous": ({"created": previous.get("created"), "path": display_path(previous_path)}
                     if previous and previous_path else None),
        "suites": entries,
        "skipped": [dict(x) for x in skipped],
    })


def write_results(path: Path, results: Mapping[str, Any]) -> Path:
    """Write atomically (temp file in the same folder, then rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, allow_nan=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def display_path(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(os.path.relpath(path)).as_posix() if Path(path).resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:  # pragma: no cover
        return str(path)
