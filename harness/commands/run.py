"""``quant-harness run``: run the suites and write the report.

Until suite support lands, it finds the suite files and says plainly when there are none, so
the README's first command already tells a new user where things stand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_SUITES_DIR = Path("suites")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run suites (default: every suites/*.toml) and write reports/index.html",
        description="Run suites and write the HTML report. Example: quant-harness run suites/demo_ssd_ncnn.toml",
    )
    parser.add_argument("suites", nargs="*", type=Path, help="suite files (default: suites/*.toml)")
    parser.add_argument("--report-dir", type=Path, default=Path("reports"), help="where to write the report")
    parser.set_defaults(func=run)


def find_suites(paths: list[Path]) -> list[Path]:
    """Suite files named on the command line, or every ``suites/*.toml`` in sorted order."""
    if paths:
        return paths
    return sorted(DEFAULT_SUITES_DIR.glob("*.toml"))


def run(args: argparse.Namespace) -> int:
    suites = find_suites(args.suites)
    if not suites:
        print(
            f"No suites found: {DEFAULT_SUITES_DIR.resolve()} holds no *.toml files. "
            "Nothing was run and no report was written."
        )
        return 0
    print(f"Found {len(suites)} suite file(s), but running suites is not implemented yet:")
    for path in suites:
        print(f"  {path}")
    return 1
