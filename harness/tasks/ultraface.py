"""UltraFace (Ultra-Light-Fast-Generic-Face-Detector-1MB) priors and post-processing.

UltraFace's priors are Caffe PriorBox boxes with two twists, both verified against the decoder embedded in
``version-RFB-320.onnx`` (the priors stored there equal ours to 3e-8):

* the grid step is ``image / ceil(image / stride)``, i.e. Caffe's *default* step for a feature map of
  ``ceil(image / stride)`` cells, not the stride itself: on 240 px the stride-32 and -64 maps have 8 and 4
  rows whose centres sit at ``(i + 0.5) / 8`` and ``(i + 0.5) / 4``, not ``/ 7.5`` and ``/ 3.75``;
* the priors are clamped to [0, 1] in centre form (``torch.clamp`` on ``(cx, cy, w, h)``), so the 256 px
  prior on a 240 px-high input gets ``h = 1``, where Caffe's ``clip`` would clip its corners instead.

So :func:`ultraface_priors` builds explicit feature sizes with no stride and asks for centre clamping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.tasks.nms import Detections, multiclass_nms
from harness.tasks.ssd import PriorBoxLayer, ceil_div, decode_boxes, prior_boxes

ULTRAFACE_STRIDES: tuple[int, ...] = (8, 16, 32, 64)
ULTRAFACE_MIN_BOXES: tuple[tuple[float, ...], ...] = ((10, 16, 24), (32, 48), (64, 96), (128, 192, 256))
ULTRAFACE_VARIANCES: tuple[float, float] = (0.1, 0.2)


def ultraface_layers(
    image_size: tuple[int, int] = (320, 240),
    *,
    strides: Sequence[int] = ULTRAFACE_STRIDES,
    min_boxes: Sequence[Sequence[float]] = ULTRAFACE_MIN_BOXES,
) -> list[PriorBoxLayer]:
    """The four prior layers of UltraFace for ``image_size`` = (W, H)."""
    return [
        PriorBoxLayer(
            min_sizes=tuple(sizes),
            feature_size=(ceil_div(image_size[0], stride), ceil_div(image_size[1], stride)),
        )
        for stride, sizes in zip(strides, min_boxes)
    ]


def ultraface_priors(image_size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """UltraFace's priors [P, 4] centre form, normalised (4420 for 320x240)."""
    return prior_boxes(ultraface_layers(image_size), image_size=image_size, clip="center")


def decode_ultraface(raw_boxes: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Corner-form normalised boxes from the ``_without_postprocessing`` model's ``boxes`` output."""
    return decode_boxes(raw_boxes, priors, variances=ULTRAFACE_VARIANCES)


def ultraface_detect(
    scores: np.ndarray,
    boxes: np.ndarray,
    *,
    score_threshold: float = 0.7,
    iou_threshold: float = 0.3,
    top_k: int | None = 200,
    keep_top_k: int | None = None,
) -> Detections:
    """Faces of one image from the decoded model outputs ``scores`` [P, 2] and corner ``boxes`` [P, 4].

    Defaults are the upstream demo's (probability 0.7, IoU 0.3, 200 candidates); labels are 1 (face).
    """
    return multiclass_nms(
        boxes,
        scores,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        top_k=top_k,
        keep_top_k=keep_top_k,
        background_label=0,
    )
