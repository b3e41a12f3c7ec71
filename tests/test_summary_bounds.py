"""Bounds beside every number: the terminal and HTML summaries show the gated quantity, its bound and margin,
and say when a suite is scored against fp32's own predictions (agreement) rather than labels."""

from __future__ import annotations

from typing import Any

from harness.commands.run import summary_table
from harness.report.summary import summary_table as html_summary


def _entry(*, pseudo: bool) -> dict[str, Any]:
    verdict = {"check": "metric", "gate": "metrics.top1.drop_max", "passed": True, "observed": 0.25,
               "bound": 0.3125, "op": "<=", "source": "x.toml [gates.metrics] top1.drop_max", "subject": "top1",
               "message": "metric top1: passed", "remedy": "nothing to do"}
    return {"name": "mnv2", "profile": "ncnn-int8", "status": "passed", "outcome_ok": True, "task": "classification",
            "metrics": {"headline": "top1", "fp32": {"top1": 1.0}, "quantized": {"top1": 0.75}, "n_images": 16,
                        "difference": {"top1": {"value": 0.25, "ci_low": 0.0625, "ci_high": 0.5}},
                        "pseudo_ground_truth": pseudo},
            "checks": [{"item": "metrics", "passed": True, "verdicts": [verdict]}],
            "layers": [], "verdict": {"message": "all passed", "remedy": "nothing to do"}}


def test_terminal_summary_shows_bound_margin_and_agreement() -> None:
    text = summary_table([_entry(pseudo=True)])
    assert "top1 agreement with fp32 (16)" in text
    assert "drop 0.2500 <= 0.3125 (margin +0.0625)" in text
    assert "top1 vs labels (16)" in summary_table([_entry(pseudo=False)])


def test_html_summary_shows_bound_margin_and_agreement() -> None:
    html = html_summary([_entry(pseudo=True)])
    assert "agreement with fp32's own predictions on 16 images, not accuracy" in html
    assert "gate: drop 0.2500 &lt;= 0.3125 (margin +0.0625)" in html
    assert "against the dataset's labels on 16 images" in html_summary([_entry(pseudo=False)])
