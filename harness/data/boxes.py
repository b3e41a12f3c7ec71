"""Box coordinate conventions and conversions between them.

Three conventions meet in this harness, and mixing them silently costs about one pixel per box, which is
enough to move VOC AP at IoU 0.5 on small objects:

* **VOC** (``"voc"``): 1-based, inclusive pixel indices, as written in the Annotations XML. A box covering
  the whole W x H image is ``(1, 1, W, H)``; its width in the devkit's convention is ``xmax - xmin + 1``.
  :class:`harness.data.voc.VOCDataset` keeps this convention unchanged so the VOC metric can reproduce the
  devkit (which adds the +1 itself).
* **continuous** (``"xyxy"``): 0-based, exclusive corner coordinates where pixel ``i`` covers ``[i, i + 1)``.
  The whole image is ``(0, 0, W, H)``. This is what detectors produce after scaling normalised boxes by the
  image size, and what COCO's ``[x, y, w, h]`` means.
* **normalised**: continuous divided by (W, H), in 0..1; SSD priors and decoders use it.
"""

from __future__ import annotations

import numpy as np


def voc_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """VOC 1-based inclusive -> continuous 0-based: ``(xmin - 1, ymin - 1, xmax, ymax)``."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    out[..., 0:2] -= 1.0
    return out


def xyxy_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Continuous 0-based -> VOC 1-based inclusive (inverse of :func:`voc_to_xyxy`; not rounded)."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    out[..., 0:2] += 1.0
    return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` -> corners ``[x1, y1, x2, y2]``."""
    b = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([b[..., 0:2], b[..., 0:2] + b[..., 2:4]], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Corners -> COCO ``[x, y, w, h]`` (what COCO results json wants)."""
    b = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([b[..., 0:2], b[..., 2:4] - b[..., 0:2]], axis=-1)


def normalize_xyxy(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Continuous pixel corners -> fractions of ``image_size`` = (W, H)."""
    scale = np.array([image_size[0], image_size[1], image_size[0], image_size[1]], dtype=np.float64)
    return np.asarray(boxes, dtype=np.float64) / scale


def denormalize_xyxy(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Fractions of ``image_size`` = (W, H) -> continuous pixel corners."""
    scale = np.array([image_size[0], image_size[1], image_size[0], image_size[1]], dtype=np.float64)
    return np.asarray(boxes, dtype=np.float64) * scale
