"""The whole report page: header, summary, one section per suite, run environment.

The page is one self-contained file: CSS inline, plots and probe images as ``data:`` URIs, no script,
no web fonts, no external URL at all. It has to open from a CI artifact, an e-mail attachment or an
air-gapped lab machine, and must not phone home when it does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.report.fmt import esc, get_dict, value_text
from harness.report.load import validate_results
from harness.report.sections import guarded, suite_section
from harness.report.summary import banner, ordered, summary_table

CSS = """
:root { --bad:#b91c1c; --ok:#166534; --warn:#92400e; --line:#d4d4d8; --muted:#52525b; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1360px; color: #18181b; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 6px; display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
h3 { font-size: 15px; margin: 18px 0 6px; border-bottom: 1px solid var(--line); padding-bottom: 2px; }
h4 { font-size: 13px; margin: 12px 0 4px; }
a { color: #1d4ed8; }
small, .small, .meta { color: var(--muted); font-size: 12px; }
.name { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px;
        overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 4px; font-weight: 700; font-size: 12px;
         white-space: nowrap; border: 2px solid; }
.badge.ok { color: var(--ok); background: #dcfce7; border-color: var(--ok); }
.badge.warn { color: var(--warn); background: #fef3c7; border-color: var(--warn); border-style: dashed; }
.badge.bad { color: #fff; background: var(--bad); border-color: var(--bad); }
.badge.err { color: #fff; background: #3f3f46; border-color: #18181b; }
.ok-t { color: var(--ok); white-space: nowrap; }
.bad-t { color: var(--bad); font-weight: 700; white-space: nowrap; }
.banner { font-size: 16px; font-weight: 700; padding: 8px 12px; border-radius: 6px; margin: 10px 0; }
.banner.ok { background: #dcfce7; color: var(--ok); border: 2px solid var(--ok); }
.banner.bad { background: #fee2e2; color: var(--bad); border: 3px solid var(--bad); }
.tw { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 12.5px; margin: 4px 0; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f5; font-weight: 600; }
table.summary { width: 100%; }
table.summary td { padding: 5px 8px; }
table.summary td:first-child { min-width: 15em; }
table.summary td:nth-child(3) { white-space: nowrap; }
table.num-cols td { font-variant-numeric: tabular-nums; }
td.num, .num { font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.fail td { background: #fef2f2; }
tr.fail td:first-child { border-left: 4px solid var(--bad); }
tr.hl td { font-weight: 600; }
table.kv td:first-child { white-space: nowrap; }
table.kv td { max-width: 60ch; overflow-wrap: anywhere; }
section.suite { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin: 20px 0; }
section.suite.bad { border: 3px solid var(--bad); }
.callout { background: #f8fafc; border-left: 4px solid #7c3aed; padding: 6px 10px; margin: 8px 0; }
.bad-box { border-left-color: var(--bad); background: #fef2f2; }
.warn-box { border-left-color: var(--warn); background: #fffbeb; }
.check-fail.warn { border-left: 4px dashed var(--warn); background: #fffbeb; }
li.more, li.shared { list-style: none; margin-left: -18px; }
li.more summary { font-weight: 400; color: var(--muted); font-size: 12px; }
.check-fail { border-left: 4px solid var(--bad); padding: 4px 10px; margin: 6px 0; background: #fff7f7; }
ul.verdicts { margin: 2px 0; padding-left: 18px; }
ul.verdicts li { margin: 3px 0; overflow-wrap: anywhere; }
.remedy-line { color: #3f3f46; font-style: italic; }
pre.remedy { background: #f4f4f5; padding: 6px 8px; margin: 6px 0 0; white-space: pre-wrap;
             overflow-wrap: anywhere; font-size: 12px; }
.note { color: var(--muted); font-style: italic; margin: 4px 0; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 4px 0; }
figcaption { font-size: 12px; color: var(--muted); max-width: 560px; }
img.plot { max-width: 100%; height: auto; display: block; }
.probe { margin: 8px 0 14px; }
.probe-title { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; margin-bottom: 4px;
               overflow-wrap: anywhere; }
.panel img { max-width: 360px; height: auto; display: block; border: 1px solid var(--line); }
.panel figcaption { font-weight: 700; color: #18181b; }
img.thumb { max-width: 200px; height: auto; border: 1px solid var(--line); }
ol.dets { margin: 2px 0; padding-left: 22px; font-size: 12px; columns: 2; max-width: 360px; }
.tag { color: #7c3aed; font-family: system-ui, sans-serif; font-weight: 700; white-space: nowrap; }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
p.top { text-align: right; margin: 8px 0 0; font-size: 12px; }
footer { margin-top: 28px; }
@media print { section.suite { break-inside: avoid-page; } details > * { display: block; } }
"""


def render_html(results: Mapping[str, Any], *, csv_hrefs: Sequence[str | None] | None = None) -> str:
    """The complete report page for a results dict (validated first, like a file would be).

    ``csv_hrefs`` (one per suite, in run order) links each suite's ``layers.csv`` relative to the page;
    ``write_report`` passes them because only it knows which files it wrote.
    """
    results = validate_results(results)
    suites = [s for s in results.get("suites") or [] if isinstance(s, Mapping)]
    hrefs = list(csv_hrefs) if csv_hrefs is not None else [None] * len(suites)
    sections = "".join(
        guarded(f"suite {s.get('name')!r}", lambda s=s, i=i: suite_section(s, i, csv_href=hrefs[i]))
        for i, s in ordered(suites)
    )
    if not suites:
        sections = '<p class="note">This run holds no suites.</p>'
    title = "quant-harness report"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} \u2014 {esc(results.get('created'))}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{_run_line(results)}</header>"
        f'<main><h2 id="summary">Summary</h2>{banner(results)}{summary_table(suites)}{_skipped(results)}'
        f"{sections}</main>"
        f"<footer>{guarded('environment', lambda: _environment(results))}</footer></body></html>\n"
    )


def _skipped(results: Mapping[str, Any]) -> str:
    """Suites that could not run on this machine (e.g. real models behind an unset environment variable)."""
    rows = [s for s in results.get("skipped") or [] if isinstance(s, Mapping)]
    if not rows:
        return ""
    items = "".join(f'<li><span class="name">{esc(s.get("suite_file"))}</span>: {esc(s.get("reason"))}</li>'
                    for s in rows)
    return f'<div class="note"><p>{len(rows)} suite(s) skipped, not run:</p><ul>{items}</ul></div>'


def _run_line(results: Mapping[str, Any]) -> str:
    prev = get_dict(results, "previous")
    prev_text = f" · trend vs run of {esc(prev.get('created'))}" if prev else " · no previous run to compare"
    return (f'<p class="meta">run finished {esc(results.get("created"))} · harness '
            f'{esc(results.get("harness_version"))} · <span class="name">{esc(results.get("command"))}</span>'
            f"{prev_text}</p>")


def _environment(results: Mapping[str, Any]) -> str:
    env = get_dict(results, "environment")
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{value_text(v)}</td></tr>" for k, v in env.items())
    prev = get_dict(results, "previous")
    prev_row = (f"<tr><td>previous results</td><td>{esc(prev.get('path'))} ({esc(prev.get('created'))})</td></tr>"
                if prev else "")
    return (f"<details><summary>Environment</summary><div class=\"tw\"><table class=\"kv\">{rows}{prev_row}"
            "</table></div></details>")
