"""HTML accuracy report rendered from ``results.json`` (schema: docs/results.md).

``write_report(results, out_dir)`` writes ``out_dir/index.html`` (one self-contained file) and
``out_dir/<suite>/layers.csv``; ``render_html(results)`` returns the page as a string;
``load_results(path)`` reads and validates a results file. This package only formats: it never runs
models and never prints.
"""

from harness.report.load import SUPPORTED_FORMAT_VERSIONS, load_results, validate_results
from harness.report.page import render_html
from harness.report.write import write_report

__all__ = ["SUPPORTED_FORMAT_VERSIONS", "load_results", "render_html", "validate_results", "write_report"]
