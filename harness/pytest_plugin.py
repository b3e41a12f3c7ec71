"""pytest plugin (registered under ``pytest11``): suite files become test items.

Every ``suites/*.toml`` (and any ``.toml`` suite named on the command line) is collected as one test per
check: ``leakage``, ``input-parity``, ``fp32-golden``, ``finite``, ``layerwise``, ``outputs``, ``metrics``,
``calibration-drift`` (node ids like ``suites/detector_ncnn_int8.toml::layerwise``, so ``-k`` selects by suite
or check). The expensive stages of a suite run once per process and are shared by its items.

pytest-xdist: the plugin switches ``--dist load`` (what ``-n 2`` implies) to ``loadfile``, so all items of a
suite file run in one worker (the stages are computed once) while different suites run in parallel. Goldens are written under a file lock and atomically; ``results.json`` and the HTML report are
written only by the controller, from the payloads the items attach to their reports.

A failure's first line is the verdict, the second the remedy, then at most 20 rows of the worst layers.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.engine import SuiteOutcome, run_suite
from harness.engine.checks import run_check
from harness.engine.results import (
    ITEM_CHECKS, CheckResult, build_results, error_entry, error_record, items_for, read_previous, suite_entry, write_results,
)
from harness.engine.stages import SuiteStages
from harness.errors import HarnessError
from harness.gates import Verdict, is_expected_failure, missing_remedy, unexpected_remedy
from harness.suite import Suite, SuiteUnavailable, load_suite

_PROPERTY = "quant_harness"
_MAX_ROWS = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quant-harness")
    group.addoption("--report-dir", default="reports", help="where suites write results.json and the HTML report")
    group.addoption(
        "--golden-update",
        action="store_true",
        default=False,
        help="rewrite golden files (the items still fail, so a second run must confirm)",
    )
    group.addoption("--suite", action="append", default=[], help="run only the named suite (repeatable)")
    group.addoption("--golden-dir", default=None,
                    help="golden root (default: golden/ beside the suites/ folder of each suite file)")


class _State:
    """Per-process: the stages of each suite, shared by its items and the ``quant_suite`` fixture."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.stages: dict[Path, SuiteStages] = {}

    def stages_for(self, suite: Suite) -> SuiteStages:
        if suite.path not in self.stages:
            root = self.config.getoption("golden_dir")
            self.stages[suite.path] = SuiteStages(
                suite, golden_root=Path(root).absolute() if root else None,
                golden_update=bool(self.config.getoption("golden_update")))
        return self.stages[suite.path]


_STATE_KEY = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    return config.stash[_STATE_KEY]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE_KEY] = _State(config)
    config.addinivalue_line("markers", "quant_suite(name): a check of a quant-harness suite")
    if getattr(config.option, "dist", None) == "load":
        # One suite file = one scope: all items of a suite run in one worker, so its stages run once.
        # (loadfile, not loadgroup: xdist 3.8's loadgroup tagging does not work with pytest 9's node ids.)
        config.option.dist = "loadfile"
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_ResultsWriter(config), "quant-harness-results")


# --- collection -----------------------------------------------------------------------------------
def _named_on_command_line(path: Path, config: pytest.Config) -> bool:
    for arg in config.args:
        candidate = Path(arg.split("::")[0])
        if not candidate.is_absolute():
            candidate = Path(config.invocation_params.dir) / candidate
        if candidate.resolve() == path.resolve():
            return True
    return False


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".toml" or file_path.name == "pyproject.toml":
        return None
    if file_path.parent.name == "suites" or _named_on_command_line(file_path, parent.config):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """One suite file: loads it (a bad file is a collection error naming the key) and yields its checks."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            suite = load_suite(self.path)
        except SuiteUnavailable as exc:
            pytest.skip(str(exc))
        except HarnessError as exc:
            raise self.CollectError(f"{exc}") from None
        wanted = self.config.getoption("suite")
        if wanted and suite.name not in wanted:
            return
        for item in items_for(suite):
            test = SuiteItem.from_parent(self, name=item, suite=suite, check=item)
            test.add_marker(pytest.mark.quant_suite(suite.name))
            yield test


class SuiteCheckFailed(Exception):
    """A check's gates failed; carries the result for the failure report."""

    def __init__(self, result: CheckResult, headline: str, remedy: str, *, details: list[str] | None = None) -> None:
        super().__init__(headline)
        self.result = result
        self.headline = headline
        self.remedy = remedy
        self.details = details or []


class SuiteItem(pytest.Item):
    def __init__(self, *, suite: Suite, check: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.check = check

    def runtest(self) -> None:
        stages = _state(self.config).stages_for(self.suite)
        result = run_check(stages, self.check)
        self.user_properties.append((_PROPERTY, result.payload(self.suite)))
        suite = self.suite
        if result.error is not None:
            exc = result.error
            if isinstance(exc, HarnessError):
                expected = f" (expected {exc.expected})" if exc.expected else ""
                raise SuiteCheckFailed(result, f"{self.check} could not run: {exc.what}{expected}",
                                       exc.remedy or "see the message above")
            record = error_record(exc)
            raise SuiteCheckFailed(result, f"{self.check} crashed: {record['message']}", record["remedy"],
                                   details=record["traceback"].rstrip().splitlines())
        failed = [v for v in result.verdicts if not v.passed]
        if suite.expect == "fail":
            self._expected_failure(result, failed)
        if failed:
            raise SuiteCheckFailed(result, failed[0].message, failed[0].remedy)

    def _expected_failure(self, result: CheckResult, failed: list[Verdict]) -> None:
        """A must-fail suite's item: xfail when it failed exactly as declared, fail on anything else."""
        suite = self.suite
        declared = suite.expected_failures
        unexpected = [v for v in failed if not is_expected_failure(v, declared)]
        if unexpected:
            v = unexpected[0]
            raise SuiteCheckFailed(result, f"{v.message} (not expected: must-fail suite {suite.name} expects only "
                                           f"{', '.join(declared)} to fail)", unexpected_remedy(v, suite.expect_reason))
        for check in (c for c in declared if c in ITEM_CHECKS[self.check]):
            if not any(v.check == check for v in failed):
                raise SuiteCheckFailed(result, f"suite {suite.name}: expected {check} to fail (strict), but it passed",
                                       missing_remedy([check], suite.expect_reason))
        hit = [v for v in failed if v.check == suite.expect_reason]
        if hit:
            pytest.xfail(f"expected failure confirmed: {hit[0].message}")
        if failed:
            pytest.xfail(f"consequence of the expected {suite.expect_reason} failure (expect_also): "
                         f"{failed[0].message}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        exc = excinfo.value
        if not isinstance(exc, SuiteCheckFailed):
            return super().repr_failure(excinfo, style=style)
        lines = [exc.headline, f"remedy: {exc.remedy}", *exc.details]
        failed = [v for v in exc.result.verdicts if not v.passed][1:]
        lines += [f"also: {v.message}" for v in failed[:5]]
        lines += _worst_layers(exc.result)
        return "\n".join(lines)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.suite.name}::{self.check}"


def _worst_layers(result: CheckResult) -> list[str]:
    rows = [r for r in result.sections.get("layers", []) if r.get("acc_cosine") is not None]
    if not rows:
        return []
    rows = sorted(rows, key=lambda r: r["acc_cosine"])[:_MAX_ROWS]
    out = [f"{'layer':<48} {'op':<14} {'acc cos':>9} {'acc SQNR':>9} {'local cos':>9} {'bound':>6}"]
    for r in rows:
        local = r.get("local_cosine")
        out.append(f"{r['name'][:48]:<48} {r['op_type'][:14]:<14} {r['acc_cosine']:9.5f} "
                   f"{(r.get('acc_sqnr_db') or float('nan')):9.2f} "
                   f"{(local if local is not None else float('nan')):9.5f} "
                   f"{(r.get('cosine_min') or float('nan')):6.3g}")
    return out


# --- results.json (controller only) ---------------------------------------------------------------
class _ResultsWriter:
    """Registered on the controller (or the only process without xdist): gathers the payloads items attach
    to their reports and writes ``results.json`` and the HTML report at the end of the session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.payloads: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A suite skipped at collection (``SuiteUnavailable``) is listed in results.json as skipped."""
        known = {s["suite_file"] for s in self.skipped}  # every xdist worker collects, and reports, each file
        if (report.skipped and report.nodeid.endswith(".toml") and report.nodeid not in known
                and isinstance(report.longrepr, tuple)):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            self.skipped.append({"suite_file": report.nodeid, "reason": reason})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        self.payloads.extend(json.loads(v) for k, v in getattr(report, "user_properties", ()) if k == _PROPERTY)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.payloads:
            return
        config = self.config
        report_dir = Path(config.getoption("report_dir"))
        if not report_dir.is_absolute():
            report_dir = Path(config.invocation_params.dir) / report_dir
        by_file: dict[str, list[dict[str, Any]]] = {}
        for p in self.payloads:
            by_file.setdefault(p["suite_file"], []).append(p)
        results_path = report_dir / "results.json"
        previous = read_previous(results_path)
        entries = []
        for path, items in sorted(by_file.items()):
            suite = load_suite(path)
            try:
                entries.append(suite_entry(suite, items, previous))
            except Exception as exc:  # noqa: BLE001 - one suite's broken entry must not lose the others
                entries.append(error_entry(suite, exc, previous))
        command = "pytest " + " ".join(shlex.quote(a) for a in config.invocation_params.args)
        results = build_results(entries, command=command, previous=previous,
                                previous_path=results_path if previous else None, skipped=self.skipped)
        write_results(results_path, results)
        _write_html(results, report_dir)


def _write_html(results: dict[str, Any], report_dir: Path) -> None:
    try:
        from harness.report import write_report
    except ImportError:  # pragma: no cover - the report package is optional during development
        return
    write_report(results, report_dir)


# --- fixture --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def quant_suite(request: pytest.FixtureRequest) -> Callable[..., SuiteOutcome]:
    """``quant_suite("suites/x.toml")`` -> :class:`harness.engine.SuiteOutcome`: the checks a collected suite
    runs, through the Python API, sharing the stages (and goldens) of this session::

        def test_my_detector(quant_suite):
            outcome = quant_suite("suites/detector_ncnn_int8.toml")
            assert outcome.entry["metrics"]["quantized"]["map"] > 0.75
    """
    state = _state(request.config)

    def run(path: str | Path, items: list[str] | None = None) -> SuiteOutcome:
        suite = load_suite(path)
        return run_suite(suite, items=items, stages=state.stages_for(suite))

    return run
