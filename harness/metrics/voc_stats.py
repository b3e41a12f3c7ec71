"""VOC per-image sufficient statistics, the AP formulas, and cheap recomputation on resamples.

Why a separate object: after matching, AP only needs, per detection, ``(class, score, tp, fp,
image)`` and, per image, the number of positives per class. With those, AP on any multiset of
images (a bootstrap resample) is a weighted cumulative sum -- no IoU, no matching -- because
matching happens inside one image and does not depend on which other images are in the set.
An image drawn k times contributes its detections and positives with weight k.

Detections are stored sorted by (class, score descending, insertion order) once, so a resample is
a gather + masked cumsum over all classes at once (:meth:`VocStats.value_on`), about a
millisecond for a few hundred images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ApMethod = Literal["11point", "area"]

# Recall thresholds for the VOC2007 11-point AP. ``k / 10`` is the correctly rounded decimal; the
# ``np.arange(0, 1.1, 0.1)`` of py-faster-rcnn gives 0.30000000000000004 for k=3, so a class whose
# recall is exactly 3/10 (3 of 10 objects) would fail "recall >= 0.3" there. We follow the
# definition ("recall >= 0.3"), not that rounding accident.
ELEVEN_POINT_THRESHOLDS = np.arange(11) / 10.0


def ap_from_pr(recall: np.ndarray, precision: np.ndarray, *, method: ApMethod) -> float:
    """AP of one class from its PR curve (points in score order).

    ``11point``: mean over t in {0, .1, ..., 1} of max precision at recall >= t (0 if none).
    ``area``: area under the monotone (right-to-left running max) precision envelope, summed
    over the recall steps; the curve is padded with (0, 0) and (1, 0) as in the devkit.
    """
    if method == "11point":
        total = 0.0
        for t in ELEVEN_POINT_THRESHOLDS:
            above = precision[recall >= t]
            total += float(above.max()) if above.size else 0.0
        # Sum then divide (not the devkit's ``ap += p / 11``): perfect detections give exactly
        # 1.0 instead of 1.0000000000000002; the two differ by at most a few ulp.
        return total / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass(frozen=True, eq=False)
class VocStats:
    """Matched detections and per-image positives; immutable snapshot of a :class:`VocAP`.

    Detection arrays are sorted by (class, score descending, insertion order); detections ignored
    by the difficult rule are already dropped (they never change AP, see ``voc.py``).
    ``n_pos[i, c]`` counts the positives of class ``c`` in image ``i`` (non-difficult ones unless
    ``difficult="count"``). Images are indexed in insertion order; ``image_ids[i]`` names them.
    """

    class_names: tuple[str, ...]
    ap_method: ApMethod
    image_ids: tuple[object, ...]
    det_class: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    det_fp: np.ndarray
    det_image: np.ndarray
    n_pos: np.ndarray
    _class_start: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        starts = np.searchsorted(self.det_class, np.arange(len(self.class_names) + 1))
        object.__setattr__(self, "_class_start", starts)

    @property
    def n_images(self) -> int:
        return int(self.n_pos.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- exact path --------------------------------------------------------------------------
    def pr_curve(self, c: int, image_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """(recall, precision, n_pos) of class ``c``; weighted when ``image_weights`` is given."""
        lo, hi = self._class_start[c], self._class_start[c + 1]
        tp = self.det_tp[lo:hi].astype(np.float64)
        fp = self.det_fp[lo:hi].astype(np.float64)
        if image_weights is None:
            npos = float(self.n_pos[:, c].sum())
        else:
            w = image_weights[self.det_image[lo:hi]]
            keep = w > 0  # a zero-weight detection would add a spurious (0/0) point
            tp, fp = tp[keep] * w[keep], fp[keep] * w[keep]
            npos = float(image_weights @ self.n_pos[:, c])
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = ctp / npos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        return recall, precision, npos

    def per_class_ap(self, image_weights: np.ndarray | None = None) -> np.ndarray:
        """AP per class; NaN for a class without positives (AP is undefined there)."""
        out = np.full(self.num_classes, np.nan)
        for c in range(self.num_classes):
            recall, precision, npos = self.pr_curve(c, image_weights)
            if npos > 0:
                out[c] = ap_from_pr(recall, precision, method=self.ap_method)
        return out

    # -- fast path for resampling -------------------------------------------------------------
    def value_on(self, weights: np.ndarray) -> float:
        """mAP with image ``i`` counted ``weights[i]`` times (bootstrap entry point).

        All classes at once: segmented cumsums are a global cumsum minus each class's base, and
        the per-class precision envelope / 11-point lookup use a class offset of 2 (recall and
        precision lie in [0, 1]) so one ``maximum.accumulate`` / ``searchsorted`` serves every
        class. Agrees with :meth:`per_class_ap` to ~1e-15 (summation order differs).
        """
        weights = np.asarray(weights, dtype=np.float64)
        C = self.num_classes
        npos = weights @ self.n_pos  # [C]
        w = weights[self.det_image]
        keep = np.flatnonzero(w > 0)
        cls = self.det_class[keep]
        wt = self.det_tp[keep] * w[keep]
        wf = self.det_fp[keep] * w[keep]
        starts = np.searchsorted(cls, np.arange(C + 1))
        ctp_all = np.concatenate(([0.0], np.cumsum(wt)))
        cfp_all = np.concatenate(([0.0], np.cumsum(wf)))
        ctp = ctp_all[1:] - ctp_all[starts[:-1]][cls]
        cfp = cfp_all[1:] - cfp_all[starts[:-1]][cls]
        valid = npos > 0
        safe_npos = np.where(valid, npos, 1.0)
        recall = ctp / safe_npos[cls]
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        # Right-to-left running max within each class: reversed order visits classes high->low,
        # so an offset growing as the class index falls restarts the max at each class boundary.
        offset = 2.0 * (C - cls)
        env = np.maximum.accumulate((precision + offset)[::-1])[::-1] - offset
        if self.ap_method == "area":
            ap = np.bincount(cls, weights=wt / safe_npos[cls] * env, minlength=C)
        else:
            key = recall + 2.0 * cls
            t = ELEVEN_POINT_THRESHOLDS[None, :] + 2.0 * np.arange(C)[:, None]  # [C, 11]
            idx = np.searchsorted(key, t, side="left")
            inside = idx < starts[1:, None]
            p = np.where(inside, env[np.minimum(idx, max(env.size - 1, 0))] if env.size else 0.0, 0.0)
            ap = p.sum(axis=1) / 11.0
        if not valid.any():
            return float("nan")
        return float(np.mean(ap[valid]))

    def compute_on(self, indices: np.ndarray) -> float:
        """mAP on a resample given as image indices (with repetition)."""
        return self.value_on(np.bincount(np.asarray(indices), minlength=self.n_images))
