"""One suite's section of the report, in the order a person debugging a red gate needs it.

Order: what failed and what to do (verdict messages and remedies), the first divergent layer, task
metrics, the layerwise picture, the worst layers, histograms, probe images, calibration drift, then the
settings that produced all of it. Each part is rendered through :func:`guarded`: a malformed piece of
one suite becomes a visible note in that place, not a missing report for every suite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from harness.report import plots, taskplots
from harness.report.fmt import (as_float, badge, esc, get_dict, get_list, is_bad, note, slug, status_of)
from harness.report.probes import classification_probe_html, detection_probe_html
from harness.report.tables import (checks_table, drift_table, first_divergent_html, gates_table, kv_table,
                                   metrics_table, table, timing_html, worst_layers_table)

log = logging.getLogger(__name__)

#: Failed verdicts shown per check before the rest fold away: the first few name the cause, the rest
#: (typically layers downstream of the first divergent one) repeat it.
SHOWN_VERDICTS = 3
MAX_VERDICTS_PER_CHECK = 30


def guarded(title: str, render: Callable[[], str]) -> str:
    """``render()``, or a note naming the part that could not be rendered (logged with its traceback)."""
    try:
        return render()
    except Exception as exc:  # noqa: BLE001 - one bad piece must not cost the whole report
        log.exception("report: could not render %s", title)
        return note(f"{title} could not be rendered ({type(exc).__name__}: {exc})")


def img(uri: str | None, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">' if uri else ""


def suite_section(suite: Mapping[str, Any], index: int, *, csv_href: str | None = None) -> str:
    """The ``<section>`` for one suite; ``csv_href`` links its layers.csv when the writer produced one."""
    name = suite.get("name")
    status = status_of(suite)
    parts = [
        f'<h2>{badge(suite.get("status"))} <span class="name">{esc(name)}</span></h2>',
        guarded("suite header", lambda: _meta(suite)),
        guarded("failed checks", lambda: _problems(suite)),
    ]
    task = suite.get("task")
    parts.append("<h3>Task metrics</h3>" + guarded("task metrics", lambda: _metrics(suite)))
    parts.append("<h3>Layerwise comparison</h3>" + guarded("layerwise comparison", lambda: _layers(suite, csv_href)))
    probes = get_list(suite, "probes")
    if probes:
        parts.append("<h3>Probe images</h3>" + guarded("probe images", lambda: _probes(suite, task)))
    drift = get_list(suite, "calibration_drift")
    if drift:
        max_rel = as_float(get_dict(get_dict(suite, "gates"), "calibration_drift_max_rel").get("value"))
        parts.append("<h3>Calibration drift</h3>" + guarded("calibration drift", lambda: drift_table(drift, max_rel)))
    parts.append(guarded("settings", lambda: _settings(suite)))
    parts.append('<p class="top"><a href="#summary">\u2191 summary</a></p>')
    css = "suite bad" if is_bad(suite) else "suite"
    return f'<section id="{slug(name, index)}" class="{css} st-{esc(status)}">{"".join(parts)}</section>'


def _meta(suite: Mapping[str, Any]) -> str:
    golden = get_dict(suite, "golden")
    bits = [f"task <b>{esc(suite.get('task'))}</b>", f"profile <b>{esc(suite.get('profile'))}</b>",
            f'suite file <span class="name">{esc(suite.get("suite_file"))}</span>']
    if golden:
        state = esc(golden.get("state"))
        if golden.get("state") in ("written", "updated", "absent"):  # golden checks cannot pass in this run
            state = f"<b>{state}</b>"
        bits.append(f"golden {state} ({esc(golden.get('path'))})")
    if suite.get("expect") and suite.get("expect") != "pass":
        reason = f": {esc(suite.get('expect_reason'))}" if suite.get("expect_reason") else ""
        bits.append(f"expect <b>{esc(suite.get('expect'))}</b>{reason}")
    desc = f'<p class="desc">{esc(suite.get("description"))}</p>' if suite.get("description") else ""
    return f'<p class="meta">{" · ".join(bits)}</p>{desc}'


def _remedy_html(remedy: Any) -> str:
    return f'<div class="remedy-line">\u2192 {esc(remedy)}</div>' if remedy else ""


def _verdict_html(v: Mapping[str, Any], *, with_remedy: bool = True) -> str:
    msg = esc(v.get("message") or f"{v.get('check')} {v.get('gate')} failed")
    return f"<li><div>{msg}</div>{_remedy_html(v.get('remedy')) if with_remedy else ''}</li>"


def _verdict_list(bad: list[Mapping[str, Any]]) -> str:
    """Failed verdicts: the first few visible, the rest folded; a remedy shared by all is said once."""
    remedies = {str(v.get("remedy")) for v in bad if v.get("remedy")}
    shared = len(remedies) == 1 and len(bad) > 1
    items = [_verdict_html(v, with_remedy=not shared) for v in bad[:MAX_VERDICTS_PER_CHECK]]
    out = "".join(items[:SHOWN_VERDICTS])
    if len(items) > SHOWN_VERDICTS:
        more = len(bad) - SHOWN_VERDICTS
        tail = ("" if len(bad) <= MAX_VERDICTS_PER_CHECK else
                f'<li class="small">\u2026 {len(bad) - MAX_VERDICTS_PER_CHECK} more in layers.csv / results.json</li>')
        out += (f'<li class="more"><details><summary>{more} more failed verdict{"s" if more != 1 else ""}</summary>'
                f'<ul class="verdicts">{"".join(items[SHOWN_VERDICTS:])}{tail}</ul></details></li>')
    return out + (f"<li class=\"shared\">{_remedy_html(next(iter(remedies)))}</li>" if shared else "")


def _problems(suite: Mapping[str, Any]) -> str:
    """The suite verdict and, for every failed check, its error and failed verdicts with remedies."""
    out = []
    expected = status_of(suite) == "xfailed"  # an expected failure is shown, but not as an alarm
    box = "warn-box" if expected else "bad-box"
    verdict = get_dict(suite, "verdict")
    failed_checks = [c for c in get_list(suite, "checks") if isinstance(c, Mapping) and c.get("passed") is False]
    # The suite verdict summarises the checks; when failed checks are listed below it only repeats them.
    # It is the explanation itself for an expectation (xfailed / xpassed) or a failure no check carries.
    explains = status_of(suite) in ("xfailed", "xpassed") or (verdict.get("passed") is False and not failed_checks)
    if verdict and explains:
        out.append(f'<div class="callout {box}"><ul class="verdicts">{_verdict_html(verdict)}</ul></div>')
    items = []
    for c in failed_checks:
        lines = []
        err = c.get("error") if isinstance(c.get("error"), Mapping) else None
        if err:
            lines.append(f'<li><div><b>{esc(err.get("type"))}</b>: {esc(err.get("message"))}</div></li>')
        bad = [v for v in c.get("verdicts") or [] if isinstance(v, Mapping) and v.get("passed") is False]
        lines.append(_verdict_list(bad))
        label = " (expected failure)" if expected else ""
        items.append(f'<div class="check-fail{" warn" if expected else ""}"><b>\u2717 {esc(c.get("item"))}'
                     f'{label}</b><ul class="verdicts">{"".join(lines)}</ul></div>')
    out.extend(items)
    checks = get_list(suite, "checks")
    if checks:
        out.append(f'<details{" open" if failed_checks else ""}><summary>All checks ({len(checks)})</summary>'
                   f"{checks_table([c for c in checks if isinstance(c, Mapping)])}</details>")
    else:
        out.append(note("no checks ran"))
    return "".join(out)


def _metrics(suite: Mapping[str, Any]) -> str:
    metrics = suite.get("metrics")
    task = suite.get("task")
    if not isinstance(metrics, Mapping):
        if task == "layers":
            return note("not applicable: a layers-only suite has no task metrics")
        return note("not run: the metrics check did not produce results")
    out = [metrics_table(metrics)]
    if metrics.get("pseudo_ground_truth") is True:  # not in docs/results.md yet; the engine writes it
        out.append('<p class="callout">Labels are the fp32 model\'s own predictions (pseudo ground truth): '
                   "these numbers measure how far the quantized model moved away from fp32, not accuracy.</p>")
    row = []
    if task == "detection":
        uri, shown, total = taskplots.pr_curves_plot(metrics)
        if uri:
            row.append(f"<figure>{img(uri, 'PR curves fp32 vs quantized')}"
                       f"<figcaption>PR curves, fp32 (solid) vs quantized (dashed): the {shown} of {total} "
                       "classes with the largest AP drop</figcaption></figure>")
        value_name = "AP"
    else:
        uri = taskplots.confusion_plot(metrics)
        if uri:
            row.append(f"<figure>{img(uri, 'confusion matrix')}<figcaption>confusion matrix</figcaption></figure>")
        else:
            row.append(_confusion_table(metrics))
        value_name = "accuracy"
    uri, shown, total = taskplots.per_class_plot(metrics, value_name)
    if uri:
        row.append(f"<figure>{img(uri, f'per-class {value_name}')}<figcaption>per-class {value_name}, "
                   f"largest drop first ({shown} of {total} classes)</figcaption></figure>")
    if row:
        out.append(f'<div class="row">{"".join(row)}</div>')
    return "".join(out)


def _confusion_table(metrics: Mapping[str, Any]) -> str:
    pairs = taskplots.top_confusions(metrics)
    if not pairs:
        return ""
    names = metrics.get("class_names") if isinstance(metrics.get("class_names"), list) else []
    rows = [[esc(taskplots.class_name(names, i)), esc(taskplots.class_name(names, j)), f"{q:.0f}",
             "\u2014" if f != f else f"{f:.0f}"] for i, j, q, f in pairs]
    return ('<div><p class="small">Largest confusions of the quantized model (too many classes for a matrix)</p>'
            + table(["true", "predicted", "quantized", "fp32"], rows, cls="num-cols") + "</div>")


def _layers(suite: Mapping[str, Any], csv_href: str | None) -> str:
    layers = [r for r in get_list(suite, "layers") if isinstance(r, Mapping)]
    fd = suite.get("first_divergent") if isinstance(suite.get("first_divergent"), Mapping) else None
    if not layers:
        return note("not run: no layerwise comparison in this run")
    out = [first_divergent_html(fd, any_failed=any(r.get("passed") is False for r in layers))]
    out.append(img(plots.layerwise_plot(layers, fd), "layerwise cosine and SQNR"))
    n_failed = sum(r.get("passed") is False for r in layers)
    link = f' \u00b7 all {len(layers)} layers: <a href="{esc(csv_href)}">layers.csv</a>' if csv_href else ""
    out.append(f'<p class="small">{len(layers)} tensors compared, {n_failed} failed a gate{link}. '
               "Accumulated = fp32 model vs quantized model at that tensor; local = that tensor's own "
               "quantization step.</p>")
    out.append(f"<details{' open' if n_failed or is_bad(suite) else ''}><summary>Worst {min(len(layers), 20)} "
               "layers by accumulated cosine (local error beside it)</summary>"
               f"{worst_layers_table(layers, fd)}</details>")
    hist_uri = plots.histograms_plot([h for h in get_list(suite, "histograms") if isinstance(h, Mapping)])
    if hist_uri:
        out.append("<h4>Activation histograms of the worst layers</h4>"
                   + img(hist_uri, "activation histograms with clip range")
                   + '<p class="small">fp32 activations on the probe images (log counts); dashed lines: '
                     "calibration clip range.</p>")
    return "".join(out)


def _probes(suite: Mapping[str, Any], task: Any) -> str:
    metrics = suite.get("metrics") if isinstance(suite.get("metrics"), Mapping) else {}
    names = metrics.get("class_names") if isinstance(metrics.get("class_names"), list) else []
    render = detection_probe_html if task == "detection" else classification_probe_html
    html = "".join(guarded("probe image", lambda p=p: render(p, names))
                   for p in get_list(suite, "probes") if isinstance(p, Mapping))
    return html if task == "detection" else f'<div class="row">{html}</div>'  # top-5 cards are narrow


def _settings(suite: Mapping[str, Any]) -> str:
    quant = get_dict(suite, "quant")
    written = {k: v for k, v in quant.items() if k != "resolved"}
    resolved = get_dict(quant, "resolved")
    return ("<details><summary>Profile, preprocessing, gates and timing</summary><div class=\"row\">"
            f"<div><h4>[quant] as written</h4>{kv_table(written)}</div>"
            f"<div><h4>profile {esc(suite.get('profile'))}: effective settings</h4>{kv_table(resolved)}</div>"
            f"<div><h4>[preprocess]</h4>{kv_table(get_dict(suite, 'preprocess'))}</div></div>"
            f"<h4>Gates and their sources</h4>{gates_table(get_dict(suite, 'gates'))}"
            f"<h4>Timing</h4>{timing_html(get_dict(suite, 'timing_s'))}</details>")
