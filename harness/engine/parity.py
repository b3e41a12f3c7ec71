"""Input parity: our preprocessing of the probe images vs the golden ``input_ref_data.dat``, and, on a
mismatch, which common preprocessing mistake explains it.

The candidates are the ones people actually hit when porting a model to a board: RGB/BGR swapped, a
different mean or scale (``mean``/``norm``, ``data_scale``, ``mean_values``/``std_dev_values``), NCHW vs
NHWC, and a different resize or crop. Each is tested by transforming our tensor the way the mistake would
and checking whether it then matches the golden one; a per-channel affine fit (``golden = a * ours + b``)
recovers a wrong mean/scale, including together with a channel swap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MATCH_REL = 1e-3  # a candidate "explains" the mismatch when it leaves at most this relative error


@dataclass(frozen=True)
class ParityResult:
    max_abs: float
    diagnosis: str  # empty when the tensors match
    explained: bool


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.abs(b).max()), 1e-12)
    return float(np.abs(a - b).max()) / scale


def _channel_axis(shape: tuple[int, ...]) -> int | None:
    """1 for NCHW, 3 for NHWC, judged by which axis has 1 or 3 channels."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3):
        return 1
    if shape[3] in (1, 3):
        return 3
    return None


def _affine(ours: np.ndarray, golden: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-channel least squares ``golden = a * ours + b``; returns a, b and the relative residual."""
    o = np.moveaxis(ours, axis, 0).reshape(ours.shape[axis], -1).astype(np.float64)
    g = np.moveaxis(golden, axis, 0).reshape(golden.shape[axis], -1).astype(np.float64)
    a = np.empty(o.shape[0])
    b = np.empty(o.shape[0])
    for c in range(o.shape[0]):
        var = o[c].var()
        a[c] = ((o[c] - o[c].mean()) * (g[c] - g[c].mean())).mean() / var if var > 0 else 1.0
        b[c] = g[c].mean() - a[c] * o[c].mean()
    fitted = a[:, None] * o + b[:, None]
    return a, b, _rel_err(fitted, g)


def diagnose(ours: np.ndarray, golden: np.ndarray, *, tolerance: float) -> ParityResult:
    """Compare and, when they differ by more than ``tolerance`` (max abs), name the likely cause."""
    if ours.shape == golden.shape:
        max_abs = float(np.abs(ours.astype(np.float64) - golden.astype(np.float64)).max()) if ours.size else 0.0
        if max_abs <= tolerance:
            return ParityResult(max_abs, "", True)
    else:
        max_abs = float("inf")
    ours = ours.astype(np.float64)
    golden = golden.astype(np.float64)

    if ours.ndim == 4 and ours.shape != golden.shape:
        for perm, what in (((0, 2, 3, 1), "NHWC"), ((0, 3, 1, 2), "NCHW")):
            moved = ours.transpose(perm)
            if moved.shape == golden.shape and _rel_err(moved, golden) <= _MATCH_REL:
                return ParityResult(max_abs, f"layout differs: the golden input is {what} "
                                    f"{list(golden.shape)}, ours is {list(ours.shape)}; set [preprocess] layout",
                                    True)
        return ParityResult(max_abs, f"shape differs: golden {list(golden.shape)}, ours {list(ours.shape)}: "
                            "resize/crop size or layout differs ([preprocess] size, layout)", True)
    axis = _channel_axis(ours.shape)
    if axis is not None and ours.shape[axis] == 3:
        swapped = np.flip(ours, axis=axis)
        if _rel_err(swapped, golden) <= _MATCH_REL:
            return ParityResult(max_abs, "channel order swapped (RGB vs BGR): reversing our channels matches the "
                                "golden input; check [preprocess] channel_order", True)
        for candidate, swap in ((ours, False), (swapped, True)):
            a, b, resid = _affine(candidate, golden, axis)
            if resid <= _MATCH_REL:
                what = "channel order swapped (RGB vs BGR) and " if swap else ""
                return ParityResult(max_abs, f"{what}mean/scale differs: golden = a * ours + b per channel with "
                                    f"a = {np.round(a, 5).tolist()}, b = {np.round(b, 5).tolist()}; check "
                                    "[preprocess] mean/std (ncnn norm = 1/std, NNIE data_scale)", True)
    if axis is not None:
        mo = np.moveaxis(ours, axis, -1).reshape(-1, ours.shape[axis])
        mg = np.moveaxis(golden, axis, -1).reshape(-1, golden.shape[axis])
        spread = np.maximum(mg.std(axis=0), 1e-12)
        if np.all(np.abs(mo.mean(axis=0) - mg.mean(axis=0)) <= 0.1 * spread) and \
                np.all(np.abs(mo.std(axis=0) - mg.std(axis=0)) <= 0.1 * spread):
            return ParityResult(max_abs, "resize/crop differs: same value distribution per channel but different "
                                "pixels; check [preprocess] resize, short_side, interpolation and the OpenCV "
                                "version", True)
    return ParityResult(max_abs, "not explained by channel order, mean/scale, layout or resize: the probe images "
                        "or the decoder may differ", False)
