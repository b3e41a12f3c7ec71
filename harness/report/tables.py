"""HTML tables of one suite: metrics, worst layers, calibration drift, checks, gates, settings, timing.

Tables are capped (20 worst layers, 30 drift rows, a few verdicts per check) because the report is read
by a person looking for the cause of a red gate; complete data lives in ``results.json`` and in the
per-suite ``layers.csv``. Every cell is escaped here or comes from ``fmt`` helpers that escape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.report.fmt import DASH, as_float, esc, get_dict, interval, num, pass_mark, value_text

WORST_LAYERS = 20
DRIFT_ROWS = 30


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "",
          row_classes: Sequence[str] | None = None) -> str:
    """A table from already-escaped cell markup; headers are escaped here. Wrapped to scroll, never overflow."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{rc}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return (f'<div class="tw"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """Every metric: fp32, quantized, fp32 - quantized with its bootstrap interval."""
    fp32, quant, diff = get_dict(metrics, "fp32"), get_dict(metrics, "quantized"), get_dict(metrics, "difference")
    names = metrics.get("names") if isinstance(metrics.get("names"), list) else list(fp32 or quant)
    headline = metrics.get("headline")
    rows, classes = [], []
    for name in names:
        d = diff.get(name) if isinstance(diff.get(name), Mapping) else {}
        conf = as_float(d.get("confidence"))
        ci = interval(d.get("ci_low"), d.get("ci_high"))
        ci_text = f"{ci} ({conf:.0%})" if ci and conf is not None else ci or DASH
        rows.append([esc(name) + (" <small>(headline)</small>" if name == headline else ""),
                     esc(num(fp32.get(name))), esc(num(quant.get(name))),
                     esc(num(d.get("value"), signed=True)), esc(ci_text)])
        classes.append("hl" if name == headline else "")
    out = table(["metric", "fp32", "quantized", "fp32 \u2212 quantized", "bootstrap interval"], rows,
                cls="num-cols", row_classes=classes)
    extra = [f"{esc(num(metrics.get('n_images'), 'd'))} evaluation images"] if as_float(metrics.get("n_images")) else []
    if as_float(metrics.get("agreement")) is not None:
        extra.append(f"fp32/quantized top-1 agreement {esc(num(metrics.get('agreement'), '.2%'))}")
    return out + (f'<p class="small">{" · ".join(extra)}</p>' if extra else "")


def _cos_key(row: Mapping[str, Any]) -> float:
    v = as_float(row.get("acc_cosine"))
    return float("-inf") if v is None else v  # undefined never passes a gate: show it among the worst


def worst_layers_table(layers: Sequence[Mapping[str, Any]], first_divergent: Mapping[str, Any] | None) -> str:
    """The failing layers first, then the lowest accumulated cosines, with the local error beside them (is the
    loss made here or inherited?) and, for a failing row, the bound it failed (not only cosine's)."""
    fd_name = (first_divergent or {}).get("name")
    worst = sorted(layers, key=lambda r: (r.get("passed") is not False, _cos_key(r)))[:WORST_LAYERS]
    rows, classes = [], []
    for r in worst:
        name = esc(r.get("name"))
        if fd_name is not None and r.get("name") == fd_name:
            name += ' <span class="tag">\u25c6 first divergent</span>'
        local, bound = as_float(r.get("local_cosine")), as_float(r.get("cosine_min"))
        local_cell = esc(num(local, ".5f"))
        if local is not None and bound is not None and local < bound:  # this tensor itself loses the signal
            local_cell = f'<b class="bad-t">{local_cell} \u2717</b>'
        failures = str(r.get("failures") or "")
        gate = pass_mark(r.get("passed")) + (f' <small>{esc(failures)}</small>' if failures else "")
        rows.append([esc(num(r.get("index"), "d")), f'<span class="name">{name}</span>', esc(r.get("op_type")),
                     esc(num(r.get("acc_cosine"), ".5f")), local_cell,
                     esc(num(r.get("acc_sqnr_db"), ".1f")), esc(num(r.get("local_sqnr_db"), ".1f")),
                     esc(num(r.get("acc_euclid_similarity"), ".4f")), esc(_bounds_text(r)), gate])
        classes.append("fail" if r.get("passed") is False else "")
    return table(["#", "tensor", "op", "acc cosine", "local cosine", "acc SQNR dB", "local SQNR dB",
                  "acc euclid", "bounds", "gate"], rows, cls="num-cols", row_classes=classes)


def _bounds_text(row: Mapping[str, Any]) -> str:
    if row.get("skipped"):
        return "skipped"
    parts = [f"{label} {op} {num(row.get(key), '.4g')}" for key, label, op in
             (("cosine_min", "cos", ">="), ("euclid_min", "euclid", ">="), ("sqnr_db_min", "SQNR", ">="),
              ("max_abs_max", "max abs", "<=")) if row.get(key) is not None]
    return ", ".join(parts) or "\u2014"


_REASONS = {
    "jump": "the error appears inside this layer's own computation (its quantised weights or arithmetic)",
    "quantization": "the error appears here, caused by the int8 quantisation of a tensor it reads",
    "drift": "the error accumulated gradually over many layers; no single layer explains it",
    "nonfinite": "the first tensor holding NaN/Inf values",
}


def first_divergent_html(fd: Mapping[str, Any] | None, *, any_failed: bool = False) -> str:
    """The first divergent layer, what caused it, and the profile-specific remedy."""
    if not fd:
        if any_failed:
            return '<p class="small">No first divergent layer was recorded, although some layers failed a gate.</p>'
        return '<p class="small">No divergent layer: every gated tensor is within its bounds.</p>'
    cause = fd.get("cause") if isinstance(fd.get("cause"), Mapping) else {}
    reason = _REASONS.get(str(fd.get("reason")), str(fd.get("reason")))
    metric = fd.get("metric") or "cosine"
    cause_html = ""
    if cause.get("node"):
        folded = f" (BatchNormalization {esc(cause.get('folded_batchnorm'))} folded in)" \
            if cause.get("folded_batchnorm") else ""
        cause_html = (f'<br>cause: {esc(cause.get("op_type"))} <span class="name">{esc(cause.get("node"))}</span>'
                      f"{folded}" + (f', quantisation of <span class="name">{esc(cause.get("tensor"))}</span>'
                                     if cause.get("tensor") else ""))
    elif fd.get("drift_start"):
        cause_html = (f'<br>drift from <span class="name">{esc(fd.get("drift_start"))}</span>; largest step at '
                      f'<span class="name">{esc(fd.get("largest_step"))}</span>')
    return (
        '<div class="callout"><b>First divergent layer:</b> '
        f'<span class="name">{esc(fd.get("name"))}</span> ({esc(fd.get("op_type"))}, node '
        f'<span class="name">{esc(fd.get("node_name"))}</span>, index {esc(num(fd.get("index"), "d"))})<br>'
        f"{esc(metric)} {esc(num(fd.get('observed'), '.5g'))} against bound {esc(num(fd.get('bound'), '.4g'))} "
        f"<small>({esc(fd.get('bound_source'))})</small>; inputs {esc(num(fd.get('inherited'), '.5g'))}"
        f"{' at ' + esc(fd.get('inherited_from')) if fd.get('inherited_from') else ''}; accumulated cosine "
        f"{esc(num(fd.get('acc_cosine'), '.5f'))}, local {esc(num(fd.get('local_cosine'), '.5f'))}"
        f" \u2014 {esc(reason)}{cause_html}"
        + (f'<pre class="remedy">{esc(fd.get("remedy"))}</pre>' if fd.get("remedy") else "")
        + "</div>"
    )


def drift_table(drift: Sequence[Mapping[str, Any]], max_rel: float | None) -> str:
    """Calibration thresholds vs the golden, largest relative change first."""
    def key(row: Mapping[str, Any]) -> float:
        v = as_float(row.get("rel_change"))
        return -abs(v) if v is not None else float("-inf")  # undefined: a site appeared, vanished or changed shape

    rows = [r for r in drift if isinstance(r, Mapping)]
    worst = sorted(rows, key=key)[:DRIFT_ROWS]
    cells, classes = [], []
    for r in worst:
        rel = as_float(r.get("rel_change"))
        over = rel is None or (max_rel is not None and abs(rel) > max_rel)
        flag = "\u2717 over limit" if rel is not None else "\u2717 changed (added, removed or reshaped)"
        cells.append([f'<span class="name">{esc(r.get("tensor"))}</span>', value_text(r.get("golden")),
                      value_text(r.get("current")), esc(num(rel, "+.2%")),
                      f'<span class="bad-t">{flag}</span>' if over else ""])
        classes.append("fail" if over else "")
    n_over = classes.count("fail")
    limit = f"limit \u00b1{max_rel:.2%}, " if max_rel is not None else ""
    summary = (f"{len(rows)} tensors, largest change first ({limit}{n_over} over); "
               f"showing {len(worst)}")
    return (f'<details{" open" if n_over else ""}><summary>{esc(summary)}</summary>'
            + table(["tensor", "golden", "current", "relative change", ""], cells, cls="num-cols",
                    row_classes=classes) + "</details>")


def checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    """One row per check: passed or not, and how many verdicts failed."""
    rows, classes = [], []
    for c in checks:
        verdicts = [v for v in c.get("verdicts") or [] if isinstance(v, Mapping)]
        failed = sum(v.get("passed") is False for v in verdicts)
        err = c.get("error") if isinstance(c.get("error"), Mapping) else None
        what = f"error: {err.get('type')}" if err else f"{failed} of {len(verdicts)} verdicts failed"
        rows.append([esc(c.get("item")), pass_mark(c.get("passed")), esc(what)])
        classes.append("fail" if c.get("passed") is False else "")
    return table(["check", "result", "detail"], rows, row_classes=classes)


def kv_table(mapping: Mapping[str, Any]) -> str:
    """A two-column key/value table; nested objects are shown as compact JSON."""
    if not mapping:
        return '<p class="note">not recorded</p>'
    rows = [[f'<span class="name">{esc(k)}</span>', value_text(v)] for k, v in mapping.items()]
    return table(["key", "value"], rows, cls="kv")


def gates_table(gates: Mapping[str, Any]) -> str:
    """Every active gate with its value and where that value came from (suite file or documented default)."""
    if not gates:
        return '<p class="note">no gates recorded</p>'
    rows = []
    for key, g in gates.items():
        g = g if isinstance(g, Mapping) else {"value": g}
        rows.append([f'<span class="name">{esc(key)}</span>', value_text(g.get("value")), esc(g.get("source"))])
    return table(["gate", "value", "source"], rows, cls="kv")


def timing_html(timing: Mapping[str, Any]) -> str:
    """Seconds per stage and the total, on one line."""
    parts = [(k, as_float(v)) for k, v in timing.items()]
    parts = [(k, v) for k, v in parts if v is not None]
    if not parts:
        return '<p class="note">timing not recorded</p>'
    total = sum(v for _, v in parts)
    text = " · ".join(f"{esc(k)} {v:.2f} s" for k, v in parts)
    return f'<p class="small">{text} · <b>total {total:.2f} s</b></p>'
