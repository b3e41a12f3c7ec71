"""``quant-harness run``: run suites, print a summary table, write ``results.json`` and the HTML report.

The same engine as the pytest plugin (``harness.engine``), run in this process suite after suite. A suite that
raises (a harness defect, onnxruntime failing on the model the harness built) is that suite's ``error``, with the
exception in its results entry and the traceback in the log; the other suites still run and are reported. The
exit status is 0 when every suite's outcome is as expected (strict expected failures included), 1 otherwise,
and 2 for a usage error (a bad suite file), so CI can gate on it directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULT_SUITES_DIR = Path("suites")
log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run suites (default: every suites/*.toml), print a summary, write reports/index.html",
        description="Run suites and write reports/results.json and reports/index.html. "
                    "Example: quant-harness run suites/detector_ncnn_int8.toml --report-dir reports",
    )
    parser.add_argument("suites", nargs="*", type=Path, help="suite files or folders (default: suites/)")
    parser.add_argument("--report-dir", type=Path, default=Path("reports"), help="where to write the report")
    parser.add_argument("--golden-update", action="store_true",
                        help="rewrite the goldens (their checks fail this run; run again to confirm)")
    parser.add_argument("--golden-dir", type=Path, default=None,
                        help="golden root (default: golden/ beside the suites/ folder)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads per session")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only the summary")
    parser.add_argument("--json", action="store_true", help="print the per-suite summary as JSON instead")
    parser.set_defaults(func=run)


def find_suites(paths: list[Path]) -> list[Path]:
    """Suite files named on the command line (folders contribute their ``*.toml``), or ``suites/*.toml``."""
    from harness.suite import discover_suites

    if paths:
        return discover_suites(paths)
    return discover_suites([DEFAULT_SUITES_DIR]) if DEFAULT_SUITES_DIR.is_dir() else []


def run(args: argparse.Namespace) -> int:
    from harness.engine import run_suite
    from harness.engine.results import build_results, display_path, error_entry, read_previous, write_results
    from harness.suite import SuiteUnavailable, load_suite

    paths = find_suites(args.suites)
    if not paths:
        print(f"No suites found: {DEFAULT_SUITES_DIR.resolve()} holds no *.toml files. "
              "Nothing was run and no report was written.")
        return 0
    suites, skipped = [], []
    for path in paths:  # every file is validated before anything runs
        try:
            suites.append(load_suite(path))
        except SuiteUnavailable as exc:
            skipped.append({"suite_file": display_path(path), "reason": str(exc)})
    # Suites that read another suite's golden (golden_from) run after it, so a first run can write it.
    suites.sort(key=lambda s: s.golden_from is not None)
    results_path = args.report_dir / "results.json"
    previous = read_previous(results_path)
    entries = []
    for i, suite in enumerate(suites, start=1):
        progress = _Progress(f"[{i}/{len(suites)}] {suite.name}", disabled=args.quiet or args.json)
        try:
            entry = run_suite(suite, golden_root=args.golden_dir, golden_update=args.golden_update,
                              threads=args.threads, progress=progress, previous=previous).entry
        except Exception as exc:  # noqa: BLE001 - a crash is this suite's error; the other suites still report
            log.error("suite %s crashed: %s", suite.name, exc, exc_info=True)
            entry = error_entry(suite, exc, previous)
        finally:
            progress.close()
        entries.append(entry)
        if not (args.quiet or args.json):
            print(f"[{i}/{len(suites)}] {suite.name}: {entry['status']}", file=sys.stderr)
    command = "quant-harness run " + " ".join(shlex.quote(str(a)) for a in sys.argv[2:])
    results = build_results(entries, command=command.strip(), previous=previous,
                            previous_path=results_path if previous else None, skipped=skipped)
    write_results(results_path, results)
    html = _write_html(results, args.report_dir)
    if args.json:
        print(json.dumps([_row(e) for e in entries], indent=1))
    else:
        print(summary_table(entries))
        for skip in skipped:
            print(f"\nskipped {skip['suite_file']}: {skip['reason']}")
        where = html or results_path
        note = f" ({len(skipped)} skipped)" if skipped else ""
        print(f"\n{sum(e['outcome_ok'] for e in entries)}/{len(entries)} suites as expected{note}; report: {where}")
    return 0 if results["passed"] else 1


def _write_html(results: dict[str, Any], report_dir: Path) -> Path | None:
    try:
        from harness.report import write_report
    except ImportError:  # pragma: no cover - report package missing in a partial install
        return None
    return write_report(results, report_dir)


def _row(e: dict[str, Any]) -> dict[str, Any]:
    m = e.get("metrics") or {}
    head = m.get("headline")
    diff = (m.get("difference") or {}).get(head) or {}
    first = e.get("first_divergent") or {}
    worst = min((r for r in e.get("layers", []) if r.get("acc_cosine") is not None),
                key=lambda r: r["acc_cosine"], default=None)
    gate = next((v for c in e.get("checks") or [] for v in c.get("verdicts") or []
                 if v.get("check") == "metric" and v.get("subject") == head), None)
    return {"suite": e["name"], "profile": e["profile"], "status": e["status"], "metric": head,
            "scored_against": ("fp32" if m.get("pseudo_ground_truth") else "labels") if m else None,
            "n_images": m.get("n_images"), "gate": gate,
            "fp32": (m.get("fp32") or {}).get(head), "quantized": (m.get("quantized") or {}).get(head),
            "difference": diff.get("value"), "ci": [diff.get("ci_low"), diff.get("ci_high")],
            "worst_layer": worst["name"] if worst else None,
            "worst_cosine": worst["acc_cosine"] if worst else None,
            "first_divergent": first.get("name"), "verdict": e["verdict"]["message"]}


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def metric_label(r: dict[str, Any]) -> str:
    """``map vs labels (300)`` / ``top1 agreement with fp32 (16)``: what the number measures, on how many images."""
    if not r["metric"]:
        return "-"
    n = f" ({r['n_images']})" if r.get("n_images") else ""
    if r.get("scored_against") == "fp32":
        return f"{r['metric']} agreement with fp32{n}"
    return f"{r['metric']} vs labels{n}"


def summary_table(entries: list[dict[str, Any]]) -> str:
    """Plain-text table: suite, profile, what is scored, fp32, int8, difference [interval], the gate with its
    bound and margin, worst layer, verdict."""
    from harness.report.fmt import gate_text

    rows = [("suite", "profile", "metric", "fp32", "int8", "fp32-int8 [95% CI]", "gate (bound, margin)",
             "worst layer (cos)", "verdict")]
    for e in entries:
        r = _row(e)
        ci = r["ci"]
        diff = _num(r["difference"], "+.4f") + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] is not None else "")
        worst = "-" if r["worst_layer"] is None else f"{_short(r['worst_layer'])} ({r['worst_cosine']:.4f})"
        rows.append((r["suite"], r["profile"], metric_label(r), _num(r["fp32"]), _num(r["quantized"]), diff,
                     gate_text(r["gate"]) or "-", worst, r["status"].upper()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [e for e in entries if not e["outcome_ok"]]
    for e in failed:
        lines += ["", f"{e['name']}: {e['verdict']['message']}", f"  remedy: {e['verdict']['remedy']}"]
    return "\n".join(lines)


def _short(name: str, width: int = 36) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


class _Progress:
    """tqdm bars per stage (calibration passes, evaluation), on stderr; silent when disabled."""

    def __init__(self, label: str, *, disabled: bool) -> None:
        self.label = label
        self.disabled = disabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.disabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{self.label} {stage}", unit="img", leave=False,
                                          file=sys.stderr)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
