"""The HTML report: structure, self-containment, escaping, CSVs, missing pieces, and the CLI.

The factory report is rendered once per module (matplotlib is the slow part); tests then read it.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import harness.cli as cli
from harness.errors import DataError
from harness.report import load_results, render_html, write_report
from harness.report.layers_csv import LAYER_COLUMNS
from tests.results_factory import HOSTILE_CLASS, SCRIPT_LAYER, make_results

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
#: Elements the browser closes implicitly; the report closes them anyway, but the walker tolerates it.
OPTIONAL_END = {"p", "li", "tr", "td", "th", "thead", "tbody"}


class Walker(HTMLParser):
    """Tag balance, ids, links, images per suite section, and every start tag seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.section_imgs: dict[str, list[str]] = {}
        self.section: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if "href" in a:
            self.hrefs.append(a["href"] or "")
        if "src" in a:
            self.srcs.append(a["src"] or "")
        if tag == "section":
            self.section = a.get("id")
            self.section_imgs[self.section or ""] = []
        if tag == "img" and self.section:
            self.section_imgs[self.section].append(a.get("src") or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None
        while self.stack and self.stack[-1] != tag and self.stack[-1] in OPTIONAL_END:
            self.stack.pop()
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def walk(html: str) -> Walker:
    w = Walker()
    w.feed(html)
    w.close()
    return w


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return make_results()


@pytest.fixture(scope="module")
def written(results: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    index = write_report(results, out)
    return index, index.read_text(encoding="utf-8")


def test_page_is_balanced_html(written: tuple[Path, str]) -> None:
    _, html = written
    assert html.startswith("<!DOCTYPE html>")
    w = walk(html)
    assert w.errors == []
    assert w.stack == []
    assert "could not be rendered" not in html  # no part fell back to the guard on valid data


def test_every_suite_and_status_is_shown(written: tuple[Path, str], results: dict[str, Any]) -> None:
    _, html = written
    for suite in results["suites"]:
        assert suite["name"] in html
    for label in ("PASSED", "FAILED", "ERROR", "XFAIL (expected)"):
        assert label in html
    assert "2 of 4 suites need attention" in html


def test_failing_suites_come_first(written: tuple[Path, str]) -> None:
    _, html = written
    summary = html[html.index('id="summary-table"'):html.index("</table>", html.index('id="summary-table"'))]
    order = [summary.index(n) for n in ("resnet_cls_bm1684", "nnie_broken", "tflite_uint8_layers", "demo_ssd_ncnn")]
    assert order == sorted(order)
    body = html[html.index("</table>", html.index('id="summary-table"')):]
    assert body.index('id="suite-1-') < body.index('id="suite-0-')  # sections in the same order


def test_sections_with_data_have_embedded_plots(written: tuple[Path, str]) -> None:
    w = walk(written[1])
    by_index = {sid.split("-")[1]: imgs for sid, imgs in w.section_imgs.items()}
    for i in ("0", "1", "3"):  # detection, classification, layers-only: all have layers
        assert any(s.startswith("data:image/png;base64,") for s in by_index[i]), i
    assert by_index["2"] == []  # the errored suite has nothing to plot
    assert any(s.startswith("data:image/jpeg;base64,") for s in by_index["0"])  # probe images


def test_no_external_resources(written: tuple[Path, str]) -> None:
    _, html = written
    attr_urls = re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]*)""", html, flags=re.I)
    css_urls = re.findall(r"url\(\s*['\"]?\s*((?:https?:)?//[^)'\"]*)", html, flags=re.I)
    assert attr_urls == [] and css_urls == []
    assert not re.search(r"https?://", html)
    w = walk(html)
    assert "script" not in w.tags and "link" not in w.tags and "@import" not in html
    assert all(s.startswith("data:image/") for s in w.srcs)
    assert all(h.startswith("#") or h.endswith("/layers.csv") for h in w.hrefs)


def test_names_from_models_are_escaped(written: tuple[Path, str]) -> None:
    _, html = written
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "cat &quot;tabby&quot; &amp; co" in html
    assert HOSTILE_CLASS not in html
    w = walk(html)
    assert SCRIPT_LAYER in "".join(w.text)  # the name reads correctly once the entities are decoded


def test_ids_are_safe_unique_and_anchors_resolve(written: tuple[Path, str]) -> None:
    w = walk(written[1])
    assert len(w.ids) == len(set(w.ids))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in w.ids)
    anchors = [h[1:] for h in w.hrefs if h.startswith("#")]
    assert len(anchors) >= 4 and set(anchors) <= set(w.ids)


def test_trend_column(written: tuple[Path, str]) -> None:
    _, html = written
    assert "\u25bc \u22120.0039" in html  # demo: 0.7811 now, 0.7850 before
    assert "status was passed" in html  # classification suite regressed from passed


def test_layer_csv_per_suite_round_trips(written: tuple[Path, str], results: dict[str, Any]) -> None:
    index, _ = written
    for suite in results["suites"]:
        path = index.parent / suite["name"] / "layers.csv"
        frame = pd.read_csv(path)
        assert len(frame) == len(suite["layers"])
        assert list(frame.columns[: len(LAYER_COLUMNS)]) == list(LAYER_COLUMNS)
        if suite["layers"]:
            assert frame["name"].tolist() == [r["name"] for r in suite["layers"]]
    assert not list(index.parent.rglob("*.tmp"))  # atomic writes leave no temp files behind


def test_unsafe_suite_name_stays_inside_out_dir(tmp_path: Path) -> None:
    results = make_results()
    results["suites"] = results["suites"][2:3]
    results["suites"][0]["name"] = "../../escape <me>"
    write_report(results, tmp_path / "out")
    csvs = list((tmp_path / "out").rglob("layers.csv"))
    assert len(csvs) == 1 and csvs[0].parent.parent == tmp_path / "out"
    assert not (tmp_path / "escape").exists()


def test_missing_pieces_render_as_not_run() -> None:
    bare = {"format_version": 1, "suites": [
        {"name": "bare", "status": "error"},
        {"name": "nulls", "task": "classification", "status": "failed", "metrics": None, "layers": [],
         "first_divergent": None, "checks": None, "probes": None, "histograms": None, "previous": None,
         "gates": None, "timing_s": None},
        {"name": "odd", "task": "detection", "status": "weird", "metrics": {"headline": "map", "fp32": {"map": None}},
         "layers": [{"index": 0, "name": "x", "acc_cosine": None, "local_cosine": None}],
         "probes": [{"image": "a.jpg", "jpeg_base64": "not base64!", "fp32": [], "quantized": None}],
         "histograms": [{"tensor": "x", "edges": [0, 1], "counts": [1, 2], "clip": None}]},
    ]}
    html = render_html(bare)
    assert "not run" in html
    assert "could not be rendered" not in html
    assert walk(html).errors == []
    assert "WEIRD" in html  # an unknown status is shown as itself


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    for version in (2, "1", True, None):
        with pytest.raises(DataError, match="format_version"):
            render_html({**make_results(), "format_version": version})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"format_version": 99, "suites": []}))
    with pytest.raises(DataError, match="format_version 99"):
        load_results(path)


def test_bad_json_and_missing_file_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no results file"):
        load_results(tmp_path / "missing.json")
    broken = tmp_path / "results.json"
    broken.write_text('{"format_version": 1, "suites": [')
    with pytest.raises(DataError, match="not valid JSON"):
        load_results(broken)
    with pytest.raises(DataError, match="layers"):
        render_html({"format_version": 1, "suites": [{"name": "s", "layers": {"a": 1}}]})


def test_cli_report_renders_next_to_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = make_results()
    results["suites"] = results["suites"][1:3]  # keep the CLI test quick: one suite with plots, one error
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert cli.main(["report", str(path)]) == 0
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "resnet_cls_bm1684" / "layers.csv").is_file()
    assert "index.html" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "index.html").is_file()


def test_cli_report_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert "no results file" in err and "Try:" in err
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"format_version": 7, "suites": []}))
    assert cli.main(["report", str(path)]) == 2
    assert "format_version 7" in capsys.readouterr().err
    assert not (tmp_path / "index.html").exists()


def test_report_size_stays_small(written: tuple[Path, str]) -> None:
    # four suites with plots and probe images; a dozen suites must stay within a few MB
    assert len(written[1].encode("utf-8")) < 800_000


def test_cli_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--help"])
    assert exc.value.code == 0
    assert "Example: quant-harness report" in capsys.readouterr().out


def test_pseudo_ground_truth_is_stated() -> None:
    results = make_results()
    results["suites"] = results["suites"][2:3]  # no plots: fast
    results["suites"][0]["metrics"] = {"headline": "map", "names": ["map"], "fp32": {"map": 1.0},
                                       "quantized": {"map": 0.9}, "pseudo_ground_truth": True}
    html = render_html(results)
    assert "pseudo ground truth" in html and "agreement with fp32's own predictions" in html
