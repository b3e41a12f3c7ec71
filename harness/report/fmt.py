"""Formatting helpers shared by every report module: escaping, numbers, anchors, status badges.

Why one module: every piece of text that reaches the page goes through :func:`esc` here, so the
escaping can be audited in one place (names come from models and datasets and are arbitrary text).
Numbers in ``results.json`` may be ``null`` (undefined floats) or missing when a check did not run;
they print as a dash instead of breaking a format spec halfway through a page.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping
from typing import Any

DASH = "\u2014"

#: status -> (symbol, label, css class). Symbol and label carry the meaning; colour only repeats it,
#: so the table still reads when printed in grayscale or seen by a colour-blind reader.
STATUS: dict[str, tuple[str, str, str]] = {
    "failed": ("\u2717", "FAILED", "bad"),
    "xpassed": ("\u2717", "XPASS (unexpected pass)", "bad"),
    "error": ("!", "ERROR", "err"),
    "xfailed": ("\u25cb", "XFAIL (expected)", "warn"),
    "passed": ("\u2713", "PASSED", "ok"),
}
#: Summary order: what needs a person's attention first.
STATUS_RANK = {"error": 0, "failed": 0, "xpassed": 0, "xfailed": 1, "passed": 2}


def esc(value: Any) -> str:
    """Escape any value for HTML text or a double-quoted attribute (``None`` becomes empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def as_float(value: Any) -> float | None:
    """A finite float, or None for null / NaN / inf / non-numbers (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def num(value: Any, spec: str = ".4g", *, signed: bool = False) -> str:
    """Format a number with ``spec``; a dash when undefined, so tables never show ``None`` or ``nan``."""
    f = as_float(value)
    if f is None:
        return DASH
    if spec.endswith("d"):  # counts and indices arrive as JSON numbers; a float index would break "d"
        text = format(round(f), ("+" if signed else "") + spec) if f == round(f) else format(f, "g")
    else:
        text = format(f, ("+" if signed else "") + spec)
    return text.replace("-", "\u2212")  # a real minus sign: does not wrap and reads as a sign


def interval(low: Any, high: Any, spec: str = ".4g") -> str:
    """``[low, high]`` or empty when the bootstrap interval was not computed."""
    if as_float(low) is None or as_float(high) is None:
        return ""
    return f"[{num(low, spec)}, {num(high, spec)}]"


def slug(name: Any, index: int) -> str:
    """A safe, unique HTML id for a suite: ASCII letters/digits from the name plus its index.

    The index makes ids unique even when two names slug to the same text (or to nothing at all).
    """
    text = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")[:40]
    return f"suite-{index}-{text}" if text else f"suite-{index}"


def status_of(suite: Mapping[str, Any]) -> str:
    status = suite.get("status")
    return status if status in STATUS else "error"


def is_bad(suite: Mapping[str, Any]) -> bool:
    """True when the suite needs attention: an unexpected outcome or an error."""
    return STATUS_RANK[status_of(suite)] == 0 or suite.get("outcome_ok") is False


def badge(status: Any) -> str:
    """A status badge with symbol and word; an unknown status is shown as itself, styled as error."""
    symbol, label, css = STATUS.get(status, ("?", str(status).upper() if status else "UNKNOWN", "err"))
    return f'<span class="badge {css}">{esc(symbol)} {esc(label)}</span>'


def pass_mark(passed: Any) -> str:
    """A small pass/fail mark for table cells (text, not only colour)."""
    if passed is True:
        return '<span class="ok-t">\u2713 pass</span>'
    if passed is False:
        return '<span class="bad-t">\u2717 FAIL</span>'
    return DASH


def value_text(value: Any) -> str:
    """Any JSON value as compact text (nested objects as JSON), escaped, for key/value tables."""
    if value is None:
        return DASH
    if isinstance(value, float):
        return esc(num(value, ".6g"))
    if isinstance(value, (dict, list)):
        return esc(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))
    return esc(value)


def note(text: str) -> str:
    """A short 'not run' style note; ``text`` is trusted markup-free prose from this package."""
    return f'<p class="note">{esc(text)}</p>'


def get_list(mapping: Mapping[str, Any] | None, key: str) -> list[Any]:
    """``mapping[key]`` when it is a list, else an empty list (missing and null pieces are 'not run')."""
    value = (mapping or {}).get(key)
    return value if isinstance(value, list) else []


def get_dict(mapping: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """``mapping[key]`` when it is an object, else an empty dict."""
    value = (mapping or {}).get(key)
    return value if isinstance(value, dict) else {}


def headline_gate(suite: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The metric verdict on the suite's headline metric (a results.json verdict object), if one was gated."""
    metrics = suite.get("metrics")
    head = metrics.get("headline") if isinstance(metrics, Mapping) else None
    for check in suite.get("checks") or []:
        for v in (check.get("verdicts") or []) if isinstance(check, Mapping) else []:
            if isinstance(v, Mapping) and v.get("check") == "metric" and v.get("subject") == head:
                return v
    return None


def gate_text(gate: Mapping[str, Any] | None) -> str | None:
    """The gated quantity beside its bound and margin: ``drop 0.2500 <= 0.3125 (margin +0.0625)``."""
    if not gate or gate.get("observed") is None or gate.get("bound") is None:
        return None
    what = str(gate.get("gate", "")).rsplit(".", 1)[-1]
    what = {"drop_max_rel": "relative drop", "drop_max": "drop"}.get(what, what)
    observed, bound = float(gate["observed"]), float(gate["bound"])
    margin = bound - observed if gate.get("op") == "<=" else observed - bound
    return f"{what} {observed:.4f} {gate.get('op')} {bound:.4g} (margin {margin:+.4f})"
