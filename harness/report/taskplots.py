"""Task plots: detection PR curves, classification confusion matrices, per-class fp32 vs quantized bars.

Class lists can be long (80 COCO classes, 1000 ImageNet ones), and a wall of tiny plots hides the
answer. So every plot here shows the classes that quantization hurt most (largest fp32 - quantized
drop first) and says how many it left out; the full numbers stay in ``results.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.report.fmt import as_float
from harness.report.plots import FAIL_COLOR, mpl_text, new_figure, to_data_uri

MAX_PR_CLASSES = 8
MAX_BAR_CLASSES = 30
MAX_MATRIX_CLASSES = 25


def class_name(class_names: Sequence[Any], i: int) -> str:
    return str(class_names[i]) if i < len(class_names) else f"class {i}"


def worst_classes(metrics: Mapping[str, Any], n_classes: int) -> list[int]:
    """Class indices ordered by per-class drop (fp32 - quantized), largest first; undefined drops last."""
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), Mapping) else {}
    fp32 = per_class.get("fp32") if isinstance(per_class.get("fp32"), list) else []
    quant = per_class.get("quantized") if isinstance(per_class.get("quantized"), list) else []

    def drop(i: int) -> float:
        a = as_float(fp32[i]) if i < len(fp32) else None
        b = as_float(quant[i]) if i < len(quant) else None
        return -np.inf if a is None or b is None else a - b

    return sorted(range(n_classes), key=lambda i: (-drop(i), i))


def pr_curves_plot(metrics: Mapping[str, Any]) -> tuple[str | None, int, int]:
    """PR curves per class, fp32 vs quantized, for the classes with the largest AP drop.

    Returns (data URI or None, classes shown, classes with curves).
    """
    curves = metrics.get("pr_curves")
    if not isinstance(curves, Mapping):
        return None, 0, 0
    fp32 = curves.get("fp32") if isinstance(curves.get("fp32"), list) else []
    quant = curves.get("quantized") if isinstance(curves.get("quantized"), list) else []
    n = max(len(fp32), len(quant))
    if n == 0:
        return None, 0, 0
    names = metrics.get("class_names") if isinstance(metrics.get("class_names"), list) else []
    shown = worst_classes(metrics, n)[:MAX_PR_CLASSES]
    rows = -(-len(shown) // 4)
    cols = -(-len(shown) // rows)  # balanced grid: 5 classes as 3 + 2, not 4 + 1
    width, height = 2.4 * cols + 0.4, 2.0 * rows + 0.4
    fig = new_figure(width, height, layout=None)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.1 / width, top=1 - 0.25 / height, bottom=0.6 / height,
                        wspace=0.12, hspace=0.35)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    for ax, ci in zip(axes, shown):
        for series, label, style in ((fp32, "fp32", dict(color="C0", lw=1.5)),
                                     (quant, "quantized", dict(color=FAIL_COLOR, lw=1.2, ls="--"))):
            r, p = _curve(series, ci)
            if r is not None:
                ax.plot(r, p, label=label, **style)
        ax.set_title(mpl_text(class_name(names, ci), 24), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.supxlabel("recall", fontsize=8)
    fig.supylabel("precision", fontsize=8)
    return to_data_uri(fig), len(shown), n


def _curve(series: list[Any], i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if i >= len(series) or not isinstance(series[i], Mapping):
        return None, None
    recall, precision = series[i].get("recall"), series[i].get("precision")
    if not isinstance(recall, list) or not isinstance(precision, list) or len(recall) != len(precision):
        return None, None
    r = np.array([np.nan if (v := as_float(x)) is None else v for x in recall], dtype=float)
    p = np.array([np.nan if (v := as_float(x)) is None else v for x in precision], dtype=float)
    return (r, p) if r.size else (None, None)


def confusion_matrix(metrics: Mapping[str, Any], which: str) -> np.ndarray | None:
    """The ``which`` ("fp32" / "quantized") confusion matrix as a square int array, or None."""
    conf = metrics.get("confusion")
    if not isinstance(conf, Mapping) or not isinstance(conf.get(which), list) or not conf[which]:
        return None
    try:
        m = np.array(conf[which], dtype=float)
    except (TypeError, ValueError):
        return None
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        return None
    return np.nan_to_num(m)


def confusion_plot(metrics: Mapping[str, Any]) -> str | None:
    """Quantized confusion matrix and, beside it, quantized - fp32 (where quantization moved predictions).

    Only for up to ``MAX_MATRIX_CLASSES`` classes: beyond that the cells are unreadable and the
    section shows a table of the largest confusions instead.
    """
    quant = confusion_matrix(metrics, "quantized")
    if quant is None or quant.shape[0] > MAX_MATRIX_CLASSES:
        return None
    fp32 = confusion_matrix(metrics, "fp32")
    fp32 = fp32 if fp32 is not None and fp32.shape == quant.shape else None
    names = metrics.get("class_names") if isinstance(metrics.get("class_names"), list) else []
    n = quant.shape[0]
    labels = [mpl_text(class_name(names, i), 14) for i in range(n)]
    side = min(4.2, 1.6 + 0.22 * n)
    panels = 2 if fp32 is not None else 1
    fig = new_figure(side * panels + 0.6, side + 0.4)
    axes = np.atleast_1d(fig.subplots(1, panels))
    _matrix(axes[0], quant, labels, "quantized (rows = true class)", "Blues", annotate=n <= 12)
    if fp32 is not None:
        diff = quant - fp32
        _matrix(axes[1], diff, labels, "quantized \u2212 fp32", "RdBu_r", annotate=n <= 12, symmetric=True)
        if not diff.any():  # an empty panel reads as a rendering failure; say what it means
            axes[1].text((n - 1) / 2, (n - 1) / 2, "identical\nto fp32", ha="center", va="center", fontsize=9,
                         color="#52525b")
    return to_data_uri(fig)


def _matrix(ax: Any, m: np.ndarray, labels: list[str], title: str, cmap: str, *, annotate: bool,
            symmetric: bool = False) -> None:
    limit = max(float(np.abs(m).max()), 1.0)
    kwargs = dict(vmin=-limit, vmax=limit) if symmetric else dict(vmin=0, vmax=limit)
    ax.imshow(m, cmap=cmap, **kwargs)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_title(title, fontsize=8)
    if annotate:
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, f"{v:+.0f}" if symmetric else f"{v:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 * limit else "black")


def top_confusions(metrics: Mapping[str, Any], limit: int = 15) -> list[tuple[int, int, float, float]]:
    """Largest off-diagonal cells of the quantized matrix: (true, predicted, quantized count, fp32 count)."""
    quant = confusion_matrix(metrics, "quantized")
    if quant is None:
        return []
    fp32 = confusion_matrix(metrics, "fp32")
    off = quant.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:limit]
    out = []
    for flat in order:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] <= 0:
            break
        f = float(fp32[i, j]) if fp32 is not None and fp32.shape == quant.shape else float("nan")
        out.append((int(i), int(j), float(off[i, j]), f))
    return out


def per_class_plot(metrics: Mapping[str, Any], value_name: str) -> tuple[str | None, int, int]:
    """Horizontal bars of a per-class value (AP or accuracy), fp32 vs quantized, worst drops on top.

    Returns (data URI or None, classes shown, classes in all).
    """
    per_class = metrics.get("per_class")
    if not isinstance(per_class, Mapping):
        return None, 0, 0
    fp32 = per_class.get("fp32") if isinstance(per_class.get("fp32"), list) else []
    quant = per_class.get("quantized") if isinstance(per_class.get("quantized"), list) else []
    n = max(len(fp32), len(quant))
    if n == 0:
        return None, 0, 0
    names = metrics.get("class_names") if isinstance(metrics.get("class_names"), list) else []
    shown = worst_classes(metrics, n)[:MAX_BAR_CLASSES]

    def values(series: list[Any]) -> np.ndarray:
        return np.array([np.nan if i >= len(series) or (v := as_float(series[i])) is None else v for i in shown])

    y = np.arange(len(shown))
    fig = new_figure(5.2, 0.26 * len(shown) + 1.1)
    ax = fig.subplots()
    ax.barh(y - 0.2, values(fp32), height=0.4, color="C0", label="fp32")
    ax.barh(y + 0.2, values(quant), height=0.4, color=FAIL_COLOR, alpha=0.8, label="quantized", hatch="//")
    ax.set_yticks(y, [mpl_text(class_name(names, i), 22) for i in shown], fontsize=7)
    ax.invert_yaxis()
    both = np.concatenate([values(fp32), values(quant)])
    top = float(np.nanmax(both)) if np.isfinite(both).any() else 1.0
    ax.set_xlim(0, max(1.0, top))  # AP and accuracy are fractions; do not assume it if a producer sends %
    ax.set_xlabel(value_name, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return to_data_uri(fig), len(shown), n
