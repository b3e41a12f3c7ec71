"""``quant-harness report RESULTS.json [--out DIR]``: re-render the HTML report from a results file.

Why: the report is a pure function of ``results.json``, so it can be rebuilt after a harness upgrade,
on another machine, or from a CI artifact without rerunning any model. A missing, broken or
unknown-version file is a user error (exit 2, message says what to do).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.report import load_results, write_report


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="re-render reports/index.html from a results.json",
        description="Re-render the HTML report from a results file. "
                    "Example: quant-harness report reports/results.json --out /tmp/report",
    )
    parser.add_argument("results", type=Path, help="results.json written by a run (or the folder holding it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for index.html and <suite>/layers.csv (default: the results file's folder)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = load_results(args.results)
    source = args.results if args.results.is_dir() else args.results.parent
    index = write_report(results, args.out if args.out is not None else source)
    n = len(results["suites"])
    print(f"wrote {index} ({n} suite{'s' if n != 1 else ''})")
    return 0
