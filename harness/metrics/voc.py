"""PASCAL VOC average precision, streaming, with the devkit's conventions as defaults.

Conventions (all keyword options; defaults = the official VOC devkit, ``VOCevaldet.m``):

* ``ap_method="11point"`` (VOC2007) or ``"area"`` (VOC2010+); see :func:`voc_stats.ap_from_pr`.
* ``iou_threshold=0.5`` with ``match_rule=">="`` (devkit ``ovmax >= 0.5``); py-faster-rcnn's
  ``voc_eval.py`` uses ``">"``. They differ only when an IoU is exactly the threshold.
* ``pixel_plus_one=True``: VOC boxes are inclusive pixel indices, so the devkit adds 1 to widths
  and heights (a box from x=1 to x=1 is one pixel wide). Pass False for continuous coordinates.
* ``difficult="ignore"``: difficult ground truths are not positives, and a detection whose best
  match is a difficult object is neither TP nor FP. ``"count"`` treats them as ordinary objects.
* Greedy matching per image and class in score order; each object is matched at most once,
  later detections of a matched object are FP. A detection's candidate is the object with the
  highest IoU among *all* objects of its class in the image (matched or not, as the devkit).
* Score ties are broken by insertion order (earlier update first, then position within the
  update): a stable descending sort, so results are deterministic and shard-merge invariant.
* mAP is the mean AP over classes with at least one positive; AP of a class without positives
  is undefined (NaN) and excluded. A class with positives and no detections has AP 0.

Detections ignored by the difficult rule are dropped from the PR curve: such a point repeats the
previous (recall, precision) and never changes AP under either method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from harness.errors import ConfigError, DataError
from harness.metrics._voc_match import MatchRule, match_detections
from harness.metrics.voc_stats import ApMethod, VocStats, ap_from_pr

__all__ = ["VocAP", "VocResult", "VocStats"]

# Pending raw boxes are matched in chunks: large enough to amortise numpy call overhead, small
# enough that memory holds only (score, flags) per detection for the bulk of a dataset.
_FLUSH_IMAGES = 1024


@dataclass(frozen=True, eq=False)
class VocResult:
    """AP per class (NaN when the class has no positives), mAP, and the PR curves for the report."""

    ap: dict[str, float]
    map: float
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    n_pos: dict[str, float]
    n_images: int
    ap_method: str


class VocAP:
    """Streaming VOC AP: ``update`` per image, ``compute``, ``merge``, ``reset``, ``stats``."""

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        ap_method: ApMethod = "11point",
        difficult: Literal["ignore", "count"] = "ignore",
        iou_threshold: float = 0.5,
        pixel_plus_one: bool = True,
        match_rule: MatchRule = ">=",
    ) -> None:
        if class_names is None and num_classes is None:
            raise ConfigError("VocAP got neither num_classes nor class_names",
                              expected="one of them", remedy="VocAP(class_names=[...])")
        if class_names is None:
            class_names = [str(i) for i in range(int(num_classes))]  # type: ignore[arg-type]
        if num_classes is not None and num_classes != len(class_names):
            raise ConfigError(f"Got num_classes={num_classes} and {len(class_names)} class_names",
                              expected="the same number", remedy="pass only class_names")
        _check_choice("ap_method", ap_method, ("11point", "area"))
        _check_choice("difficult", difficult, ("ignore", "count"))
        _check_choice("match_rule", match_rule, (">=", ">"))
        if not 0.0 <= iou_threshold <= 1.0:
            raise ConfigError(f"Got iou_threshold={iou_threshold}", expected="a value in [0, 1]",
                              remedy="use 0.5 for VOC")
        self.class_names = tuple(str(c) for c in class_names)
        self.num_classes = len(self.class_names)
        self.ap_method = ap_method
        self.difficult = difficult
        self.iou_threshold = float(iou_threshold)
        self.pixel_plus_one = bool(pixel_plus_one)
        self.match_rule = match_rule
        self.reset()

    # -- streaming API ------------------------------------------------------------------------
    def reset(self) -> None:
        self.image_ids_: list[object] = []
        self._seen: set[object] = set()
        self._n_dets = 0  # global insertion counter, breaks score ties
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._pending_first_image = 0
        # Matched chunks: (class, score, tp, fp, image, seq) per detection; n_pos rows per image.
        self._chunks: list[tuple[np.ndarray, ...]] = []
        self._npos: list[np.ndarray] = []
        self._stats: VocStats | None = None  # cache; any update or merge invalidates it

    def update(
        self,
        image_id: object,
        gt_boxes: np.ndarray,
        gt_labels: np.ndarray,
        gt_difficult: np.ndarray | None,
        det_boxes: np.ndarray,
        det_scores: np.ndarray,
        det_labels: np.ndarray,
    ) -> None:
        """Add one image. Boxes are ``[N, 4]`` xyxy; labels are class indices in [0, C)."""
        if image_id in self._seen:
            raise DataError(f"Image {image_id!r} was added twice",
                            expected="each image once per metric",
                            remedy="check the dataset list for duplicates")
        gb = _boxes(gt_boxes, "gt_boxes", image_id)
        gl = _labels(gt_labels, gb.shape[0], self.num_classes, "gt_labels", image_id)
        gd = (np.zeros(gb.shape[0], dtype=bool) if gt_difficult is None
              else np.asarray(gt_difficult, dtype=bool).reshape(-1))
        if gd.shape[0] != gb.shape[0]:
            raise DataError(f"Image {image_id!r}: {gd.shape[0]} difficult flags for {gb.shape[0]} boxes",
                            expected="one flag per ground-truth box")
        db = _boxes(det_boxes, "det_boxes", image_id)
        ds = np.asarray(det_scores, dtype=np.float64).reshape(-1)
        if ds.shape[0] != db.shape[0] or not np.isfinite(ds).all():
            raise DataError(f"Image {image_id!r}: {ds.shape[0]} scores for {db.shape[0]} boxes, or non-finite scores",
                            expected="one finite score per detection")
        dl = _labels(det_labels, db.shape[0], self.num_classes, "det_labels", image_id)
        seq = np.arange(self._n_dets, self._n_dets + ds.shape[0])
        self._n_dets += ds.shape[0]
        self._seen.add(image_id)
        self._stats = None
        self.image_ids_.append(image_id)
        self._pending.append((gb, gl, gd, db, ds, dl, seq))
        if len(self._pending) >= _FLUSH_IMAGES:
            self._flush()

    def merge(self, other: "VocAP") -> "VocAP":
        """Append ``other``'s images after this one's (in place; returns self)."""
        mine = (self.class_names, self.ap_method, self.difficult, self.iou_threshold,
                self.pixel_plus_one, self.match_rule)
        theirs = (other.class_names, other.ap_method, other.difficult, other.iou_threshold,
                  other.pixel_plus_one, other.match_rule)
        if mine != theirs:
            raise ConfigError(f"Cannot merge VocAP with settings {theirs} into {mine}",
                              expected="identical classes and options")
        overlap = self._seen & other._seen
        if overlap:
            raise DataError(f"Both shards contain image {next(iter(overlap))!r}",
                            expected="disjoint shards", remedy="split the image list without overlap")
        self._flush()
        other._flush()
        n_img, n_det = len(self.image_ids_), self._n_dets
        for cls, score, tp, fp, image, seq in other._chunks:
            self._chunks.append((cls, score, tp, fp, image + n_img, seq + n_det))
        self._npos.extend(other._npos)
        self.image_ids_.extend(other.image_ids_)
        self._seen |= other._seen
        self._n_dets += other._n_dets
        self._pending_first_image = len(self.image_ids_)
        self._stats = None
        return self

    def stats(self) -> VocStats:
        """Per-image sufficient statistics (for compute, resampling and the paired bootstrap)."""
        self._flush()
        if self._stats is None:
            self._stats = self._build_stats()
        return self._stats

    def _build_stats(self) -> VocStats:
        if self._chunks:
            cls, score, tp, fp, image, seq = (np.concatenate(c) for c in zip(*self._chunks))
        else:
            cls, image, seq = (np.zeros(0, np.int64) for _ in range(3))
            score, tp, fp = np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)
        keep = tp | fp  # drop ignored detections (see module docstring)
        cls, score, tp, fp, image, seq = (a[keep] for a in (cls, score, tp, fp, image, seq))
        # Chunks are in insertion order, so two stable sorts give (class, -score, seq) order
        # at about half the cost of a three-key lexsort.
        by_score = np.argsort(-score, kind="stable")
        order = by_score[np.argsort(cls[by_score], kind="stable")]
        npos = (np.concatenate(self._npos) if self._npos
                else np.zeros((0, self.num_classes), dtype=np.int64))
        return VocStats(
            class_names=self.class_names, ap_method=self.ap_method,  # type: ignore[arg-type]
            image_ids=tuple(self.image_ids_),
            det_class=cls[order].astype(np.int64), det_score=score[order].astype(np.float64),
            det_tp=tp[order].astype(bool), det_fp=fp[order].astype(bool),
            det_image=image[order].astype(np.int64), n_pos=npos,
        )

    def compute(self, *, image_weights: np.ndarray | None = None) -> VocResult:
        """AP per class, mAP and PR curves; ``image_weights[i]`` counts image ``i`` that many times."""
        return result_from_stats(self.stats(), image_weights=image_weights)

    def compute_on(self, indices: np.ndarray) -> VocResult:
        """Result on a multiset of image indices (e.g. one bootstrap resample)."""
        return self.compute(image_weights=np.bincount(np.asarray(indices), minlength=len(self.image_ids_)))

    # -- internals ----------------------------------------------------------------------------
    def _flush(self) -> None:
        if not self._pending:
            return
        first = self._pending_first_image
        gb, gl, gd, db, ds, dl, seq = (np.concatenate(col) for col in zip(*self._pending))
        image_index = np.arange(first, first + len(self._pending))
        g_img = np.repeat(image_index, [p[0].shape[0] for p in self._pending])
        d_img = np.repeat(image_index, [p[3].shape[0] for p in self._pending])
        count_difficult = self.difficult == "count"
        tp, fp = match_detections(
            det_boxes=db, det_scores=ds, det_labels=dl, det_image=d_img, det_seq=seq,
            gt_boxes=gb, gt_labels=gl, gt_difficult=gd, gt_image=g_img,
            num_classes=self.num_classes, iou_threshold=self.iou_threshold,
            match_rule=self.match_rule, pixel_plus_one=self.pixel_plus_one,
            count_difficult=count_difficult,
        )
        n = len(self._pending)
        positive = np.ones_like(gd) if count_difficult else ~gd
        npos = np.bincount((g_img[positive] - first) * self.num_classes + gl[positive],
                           minlength=n * self.num_classes).reshape(n, self.num_classes)
        self._chunks.append((dl, ds, tp, fp, d_img, seq))
        self._npos.append(npos.astype(np.int64))
        self._pending = []
        self._pending_first_image = first + n


def result_from_stats(stats: VocStats, *, image_weights: np.ndarray | None = None) -> VocResult:
    """Exact per-class AP and curves from statistics (the report path; resampling uses value_on)."""
    if image_weights is not None:
        image_weights = np.asarray(image_weights, dtype=np.float64)
        if image_weights.shape != (stats.n_images,):
            raise DataError(f"Got {image_weights.shape[0] if image_weights.ndim else 0} image weights",
                            expected=f"one per image ({stats.n_images})")
    ap, prec, rec, npos_d = {}, {}, {}, {}
    for c, name in enumerate(stats.class_names):
        recall, precision, npos = stats.pr_curve(c, image_weights)
        npos_d[name] = npos
        prec[name], rec[name] = precision, (recall if npos > 0 else np.full_like(recall, np.nan))
        ap[name] = float("nan")
        if npos > 0:
            ap[name] = ap_from_pr(recall, precision, method=stats.ap_method)
    defined = [v for v in ap.values() if not np.isnan(v)]
    mean = float(np.mean(defined)) if defined else float("nan")
    return VocResult(ap=ap, map=mean, precision=prec, recall=rec, n_pos=npos_d,
                     n_images=stats.n_images, ap_method=stats.ap_method)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"Got {name}={value!r}", expected=f"one of {', '.join(allowed)}")


def _boxes(boxes: np.ndarray, name: str, image_id: object) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise DataError(f"Image {image_id!r}: {name} has shape {arr.shape} or non-finite values",
                        expected="a finite [N, 4] array of x1, y1, x2, y2")
    return arr


def _labels(labels: np.ndarray, n: int, num_classes: int, name: str, image_id: object) -> np.ndarray:
    arr = np.asarray(labels).reshape(-1)
    if arr.shape[0] != n:
        raise DataError(f"Image {image_id!r}: {arr.shape[0]} {name} for {n} boxes", expected="one label per box")
    if n and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(f"Image {image_id!r}: {name} outside [0, {num_classes})",
                        expected="integer class indices", remedy="map class names to indices first")
    return arr.astype(np.int64)
