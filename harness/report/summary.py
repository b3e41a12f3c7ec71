"""The summary at the top of the report: one row per suite, suites needing attention first.

This table is what a person sees in the first minute after a red build, so each row answers: did it
pass (symbol + word + colour), what is the headline metric fp32 vs quantized, is the difference real
(bootstrap interval), where did the network first diverge, and is it getting worse than last run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.report.fmt import (DASH, gate_text, headline_gate, STATUS_RANK, as_float, badge, esc, get_dict, interval, is_bad, num, slug,
                                status_of)


def ordered(suites: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """(run index, suite) with failed / errored / xpassed first, then xfailed, then passed; stable within."""
    indexed = list(enumerate(suites))
    return sorted(indexed, key=lambda p: (0 if is_bad(p[1]) else STATUS_RANK[status_of(p[1])], p[0]))


def headline(suite: Mapping[str, Any]) -> tuple[str | None, float | None, float | None, Mapping[str, Any]]:
    """(headline name, fp32, quantized, difference entry) of a suite; Nones when metrics did not run."""
    metrics = suite.get("metrics") if isinstance(suite.get("metrics"), Mapping) else {}
    name = metrics.get("headline")
    if not isinstance(name, str):
        return None, None, None, {}
    diff = get_dict(get_dict(metrics, "difference"), name)
    return name, as_float(get_dict(metrics, "fp32").get(name)), as_float(get_dict(metrics, "quantized").get(name)), diff


def _previous_value(previous: Mapping[str, Any], key: str, name: str | None) -> float | None:
    """``previous[key]`` as a number: the schema's ``quantized`` may be the headline value or a {name: value} map."""
    value = previous.get(key)
    if isinstance(value, Mapping):
        value = value.get(name) if name is not None else None
    return as_float(value)


def trend(suite: Mapping[str, Any]) -> str:
    """Quantized headline now vs the previous results file, and a status change; a dash without history."""
    previous = suite.get("previous")
    if not isinstance(previous, Mapping):
        return DASH
    name, _, quant, _ = headline(suite)
    prev_name = previous.get("headline") if isinstance(previous.get("headline"), str) else name
    before = _previous_value(previous, "quantized", prev_name)
    parts = []
    if quant is not None and before is not None and (prev_name == name):
        delta = quant - before
        if delta == 0:
            parts.append(f"= unchanged <small>({esc(num(before))})</small>")
        else:
            arrow = "\u25b2" if delta > 0 else "\u25bc"
            parts.append(f"{arrow} {esc(num(delta, '.4f', signed=True))} <small>(was {esc(num(before))})</small>")
    prev_status = previous.get("status")
    if isinstance(prev_status, str) and prev_status != suite.get("status"):
        parts.append(f"<small>status was {esc(prev_status)}</small>")
    elif not parts:
        parts.append(f"<small>unchanged ({esc(prev_status)})</small>" if prev_status else DASH)
    return "<br>".join(parts)


def _first_divergent(suite: Mapping[str, Any]) -> str:
    fd = suite.get("first_divergent")
    if not isinstance(fd, Mapping):
        return DASH if suite.get("layers") else '<span class="small">not run</span>'
    cause = fd.get("cause") if isinstance(fd.get("cause"), Mapping) else {}
    why = (f"cause {esc(cause.get('node'))}" if cause.get("node") and cause.get("node") != fd.get("node_name")
           else esc(fd.get("reason")))
    return (f'<span class="name">{esc(fd.get("name"))}</span> <small>{esc(fd.get("op_type"))} '
            f"#{esc(num(fd.get('index'), 'd'))}, {esc(fd.get('metric') or 'cosine')} "
            f"{esc(num(fd.get('observed', fd.get('acc_cosine')), '.4g'))}; {why}</small>")


def _failed_checks(suite: Mapping[str, Any]) -> str:
    failed = [c.get("item") for c in suite.get("checks") or []
              if isinstance(c, Mapping) and c.get("passed") is False]
    return ", ".join(esc(f) for f in failed) if failed else DASH


def summary_table(suites: Sequence[Mapping[str, Any]]) -> str:
    """The summary ``<table>``; suite names link to their sections (ids from ``fmt.slug``)."""
    rows = []
    for index, suite in ordered(suites):
        name, fp32, quant, diff = headline(suite)
        if name is None:
            metric, delta = '<span class="small">not run</span>', DASH
        else:
            metric = f"{esc(name)}: {esc(num(fp32))} \u2192 {esc(num(quant))}"
            n = get_dict(suite, "metrics").get("n_images")
            images = f" on {esc(num(n, 'd'))} images" if n is not None else ""
            if get_dict(suite, "metrics").get("pseudo_ground_truth") is True:
                metric += f"<br><small>agreement with fp32's own predictions{images}, not accuracy</small>"
            else:
                metric += f"<br><small>against the dataset's labels{images}</small>"
            ci = interval(diff.get("ci_low"), diff.get("ci_high"))
            delta = esc(num(diff.get("value"), signed=True)) + (f"<br><small>{esc(ci)}</small>" if ci else "")
            gate = headline_gate(suite)
            text = gate_text(gate)
            if text and gate is not None:
                delta += f'<br><small title="{esc(gate.get("source"))}">gate: {esc(text)}</small>'
        anchor = slug(suite.get("name"), index)
        css = ' class="fail"' if is_bad(suite) else ""
        rows.append(
            f"<tr{css}><td><a href=\"#{anchor}\" class=\"name\">{esc(suite.get('name'))}</a><br>"
            f"<small>{esc(suite.get('task'))}</small></td><td>{badge(suite.get('status'))}</td>"
            f"<td>{esc(suite.get('profile'))}</td><td>{metric}</td><td class=\"num\">{delta}</td>"
            f"<td>{_first_divergent(suite)}</td><td>{_failed_checks(suite)}</td><td>{trend(suite)}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("suite", "status", "profile", "headline fp32 \u2192 quantized",
                                              "fp32 \u2212 quantized [interval]", "first divergent layer",
                                              "failed checks", "trend vs previous"))
    return (f'<div class="tw"><table id="summary-table" class="summary"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def banner(results: Mapping[str, Any]) -> str:
    """One line: how many suites need attention, as text and colour."""
    suites = [s for s in results.get("suites") or [] if isinstance(s, Mapping)]
    bad = sum(is_bad(s) for s in suites)
    ok = results.get("passed") is not False and bad == 0
    text = (f"\u2713 All {len(suites)} suites as expected" if ok
            else f"\u2717 {bad} of {len(suites)} suites need attention" if bad
            else "\u2717 run did not pass")
    return f'<p class="banner {"ok" if ok else "bad"}">{esc(text)}</p>'
