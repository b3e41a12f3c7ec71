"""Layer plots for the report: error along the network, and the worst layers' activation histograms.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through ``pyplot``: pyplot
keeps global state (a current figure, a chosen backend) that a library must not change under a caller,
and figures it creates stay alive until closed. Each plot returns a ``data:image/png;base64`` URI so the
report stays one file that opens from disk. Figures are small and at a modest dpi on purpose: a report
of a dozen suites must stay a few MB.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from harness.report.fmt import as_float

DPI = 80
FAIL_COLOR = "#b91c1c"


def new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    """A figure with its own Agg canvas (no pyplot, no global backend switch).

    ``layout=None`` is for figures whose margins are known in advance: constrained layout costs an extra
    draw pass (about half of a small figure's time here), which adds up over a dozen suites.
    """
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig: Figure) -> str:
    """Render ``fig`` as a PNG ``data:`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mpl_text(text: Any, limit: int = 40) -> str:
    """Text safe for a matplotlib label: shortened, and ``$`` escaped so names never turn into mathtext.

    A ``$`` pair in a class or tensor name would otherwise be parsed as math (and raise if invalid) when
    the figure is drawn. Long names lose their middle, not their end: tensor paths such as
    ``/stage8/stage8.1/.../Clip_output_0`` differ at both ends.
    """
    s = str(text)
    if len(s) > limit:
        head = (limit - 1) // 3
        s = s[:head] + "\u2026" + s[len(s) - (limit - 1 - head):]
    return s.replace("$", r"\$")


def column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One numeric column of a list of rows; null / missing / non-finite become NaN (gaps in a line)."""
    return np.array([np.nan if (v := as_float(r.get(key))) is None else v for r in rows], dtype=float)


def layerwise_plot(layers: Sequence[Mapping[str, Any]], first_divergent: Mapping[str, Any] | None) -> str | None:
    """Cosine (top) and SQNR dB (bottom) along the topological index, accumulated vs local error.

    The accumulated line shows where the quantized model drifts away from fp32; the local markers show
    which tensor's own quantization step causes it; the dashed step line is the gate bound per layer.
    Layers that failed a gate get a red cross; the first divergent layer a vertical line.
    """
    if not layers:
        return None
    x = np.array([as_float(r.get("index")) if as_float(r.get("index")) is not None else i
                  for i, r in enumerate(layers)], dtype=float)
    failed = np.array([r.get("passed") is False for r in layers])
    fig = new_figure(9.6, 4.4, layout=None)
    fig.subplots_adjust(left=0.075, right=0.99, top=0.98, bottom=0.1, hspace=0.08)
    ax_cos, ax_sqnr = fig.subplots(2, 1, sharex=True)
    panels = ((ax_cos, "cosine", "cosine_min", "cosine"), (ax_sqnr, "sqnr_db", "sqnr_db_min", "SQNR (dB)"))
    for ax, metric, bound_key, ylabel in panels:
        acc, local = column(layers, f"acc_{metric}"), column(layers, f"local_{metric}")
        bound = column(layers, bound_key)
        ax.plot(x, acc, color="C0", lw=1.5, label="accumulated")
        ax.plot(x, local, "o", color="C1", ms=2.8, alpha=0.8, label="local (own quant step)")
        if np.isfinite(bound).any():
            ax.step(x, bound, where="mid", color=FAIL_COLOR, ls="--", lw=1, label=f"gate {bound_key}")
        if failed.any():
            ax.plot(x[failed], acc[failed], "x", color=FAIL_COLOR, ms=6, mew=1.5, label="failed gate")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if metric == "cosine":
            _cosine_limits(ax, acc, local, bound)
    fd_index = as_float((first_divergent or {}).get("index"))
    if fd_index is not None:
        for ax in (ax_cos, ax_sqnr):
            ax.axvline(fd_index, color="#7c3aed", lw=1.2, ls=":")
        right_half = fd_index > (np.nanmin(x) + np.nanmax(x)) / 2  # keep the label inside the axes
        ax_cos.annotate(f"first divergent: {mpl_text((first_divergent or {}).get('name'), 32)}",
                        xy=(fd_index, 1), xycoords=("data", "axes fraction"), xytext=(-4 if right_half else 4, -12),
                        textcoords="offset points", color="#7c3aed", fontsize=8, ha="right" if right_half else "left",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    ax_cos.legend(loc="lower left", fontsize=7, ncol=4, framealpha=0.8)
    ax_sqnr.set_xlabel("topological index")
    return to_data_uri(fig)


def _cosine_limits(ax: Any, *series: np.ndarray) -> None:
    """Zoom the cosine axis on the data: near-1 values must not collapse into one flat line at the top."""
    values = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.array([])
    if values.size == 0:
        return
    low = float(values.min())
    span = max(1.0 - low, 1e-4)
    ax.set_ylim(low - 0.08 * span, 1.0 + 0.08 * span)


def histograms_plot(histograms: Sequence[Mapping[str, Any]]) -> str | None:
    """Small multiples of the worst layers' fp32 activation histograms, with the calibration clip range.

    The title says which share of the probe activations falls outside the clip range: a large share
    means the range clips real signal; a range far wider than the data means coarse steps.
    """
    usable = [h for h in histograms if _histogram_arrays(h) is not None][:4]
    if not usable:
        return None
    n = len(usable)
    width = 2.5 * n + 0.4
    fig = new_figure(width, 2.3, layout=None)
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.1 / width, top=0.8, bottom=0.12, wspace=0.3)
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, h in zip(axes, usable):
        edges, counts = _histogram_arrays(h)  # type: ignore[misc]
        log = bool(h.get("log_counts", True))
        # On a log axis a fill down to 0 is undefined; 0.5 sits below the smallest non-empty bin (1).
        ax.stairs(counts, edges, fill=True, color="C0", alpha=0.75, baseline=0.5 if log else 0)
        if log:
            ax.set_yscale("log", nonpositive="clip")  # "mask" breaks the filled outline at empty bins
            ax.set_ylim(bottom=0.5)
            ax.yaxis.set_minor_locator(NullLocator())  # minor log ticks cost a third of the draw time
        clip = h.get("clip")
        title = mpl_text(h.get("tensor"), 30)
        if isinstance(clip, list) and len(clip) == 2:
            for c in clip:
                if as_float(c) is not None:
                    ax.axvline(float(c), color=FAIL_COLOR, ls="--", lw=1)
            share = _outside_share(edges, counts, clip)
            if share is not None:
                title += f"\n{share:.2%} outside clip"
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("count (log)", fontsize=8)
    return to_data_uri(fig)


def _histogram_arrays(h: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    edges, counts = h.get("edges"), h.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or len(counts) == 0:
        return None
    if len(edges) != len(counts) + 1:
        return None
    e = np.array([np.nan if (v := as_float(x)) is None else v for x in edges], dtype=float)
    c = np.array([0.0 if (v := as_float(x)) is None else v for x in counts], dtype=float)
    if not np.isfinite(e).all() or not (np.diff(e) >= 0).all():
        return None
    return e, c


def _outside_share(edges: np.ndarray, counts: np.ndarray, clip: list[Any]) -> float | None:
    low, high = as_float(clip[0]), as_float(clip[1])
    total = float(counts.sum())
    if low is None or high is None or total <= 0:
        return None
    centers = (edges[:-1] + edges[1:]) / 2
    outside = float(counts[(centers < low) | (centers > high)].sum())
    return outside / total if math.isfinite(outside) else None
