"""pytest plugin (registered under ``pytest11``): options shared by the harness's test items.

Suite collection arrives with the suites issue; the options are registered now so that
``pytest --report-dir`` and ``--golden-update`` are stable names from the first release.
"""

from __future__ import annotations

import pytest


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
