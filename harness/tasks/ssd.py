"""SSD prior (anchor) boxes with Caffe ``PriorBox`` semantics, and box encoding / decoding.

This module is shared by evaluation (decoding a detector's raw regressions) and training (encoding ground
truth against the same priors), so the two can never disagree about the anchor layout.

Prior layout, exactly as Caffe's PriorBox layer (``prior_box_layer.cpp``) emits it:

* cells row-major: for ``y`` in rows, for ``x`` in columns;
* within a cell, for each ``min_size`` (index ``s``): the square ``min_size`` box; then, if ``max_sizes`` is
  given, the square ``sqrt(min_size * max_sizes[s])`` box; then one box per aspect ratio ``ar != 1`` in the
  de-duplicated list, ``w = min_size * sqrt(ar)``, ``h = min_size / sqrt(ar)``, where ``flip`` inserts
  ``1/ar`` right after each ``ar``;
* centres ``((x + offset) * step_w, (y + offset) * step_h)`` divided by the image size; sizes divided by the
  image size.

Grid convention (how big the feature map is and what ``step`` is) is where SSD ports disagree, so it is
explicit per layer: the feature-map size is ``feature_size`` when given, else ``ceil(image / stride)``; the
step is ``step`` when given, else ``stride`` when given (Caffe SSD prototxts set ``step`` to the stride),
else ``image / feature_size`` (Caffe's default when ``step`` is unset).

Everything returned is **centre form** ``(cx, cy, w, h)`` normalised to the image, float32, shape [P, 4].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

_AR_EPS = 1e-6  # Caffe's tolerance for "this aspect ratio is already in the list" and "ar == 1"


@dataclass(frozen=True, kw_only=True)
class PriorBoxLayer:
    """One Caffe ``PriorBox`` layer (one feature map). Sizes are in input-image pixels."""

    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...] = ()
    aspect_ratios: tuple[float, ...] = ()
    flip: bool = True
    stride: int | None = None
    feature_size: tuple[int, int] | None = None  # (width, height) of the feature map
    step: float | tuple[float, float] | None = None  # (step_w, step_h) in pixels
    offset: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_sizes", tuple(float(m) for m in self.min_sizes))
        object.__setattr__(self, "max_sizes", tuple(float(m) for m in self.max_sizes))
        object.__setattr__(self, "aspect_ratios", tuple(float(a) for a in self.aspect_ratios))
        if not self.min_sizes or any(m <= 0 for m in self.min_sizes):
            raise ValueError(f"min_sizes must be positive and non-empty, got {self.min_sizes}")
        if self.max_sizes and len(self.max_sizes) != len(self.min_sizes):
            raise ValueError("max_sizes must be empty or have one entry per min_size (Caffe's rule)")
        if any(mx <= mn for mn, mx in zip(self.min_sizes, self.max_sizes)):
            raise ValueError(f"every max_size must exceed its min_size, got {self.min_sizes} / {self.max_sizes}")
        if any(a <= 0 for a in self.aspect_ratios):
            raise ValueError(f"aspect ratios must be positive, got {self.aspect_ratios}")
        if self.stride is None and self.feature_size is None:
            raise ValueError("give stride or feature_size (or both)")

    @property
    def expanded_aspect_ratios(self) -> tuple[float, ...]:
        """Caffe's ``aspect_ratios_`` list without the leading 1: de-duplicated, ``1/ar`` after ``ar`` if flip."""
        ratios = [1.0]
        for ar in self.aspect_ratios:
            if any(abs(ar - r) < _AR_EPS for r in ratios):
                continue
            ratios.append(ar)
            if self.flip:
                ratios.append(1.0 / ar)
        return tuple(r for r in ratios if abs(r - 1.0) >= _AR_EPS)

    @property
    def num_priors_per_cell(self) -> int:
        per_min = 1 + (1 if self.max_sizes else 0) + len(self.expanded_aspect_ratios)
        return per_min * len(self.min_sizes)

    def resolve_grid(self, image_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[float, float]]:
        """(feature width, height) and (step_w, step_h) in pixels for ``image_size`` = (W, H)."""
        if self.feature_size is not None:
            fw, fh = self.feature_size
        else:
            assert self.stride is not None
            fw, fh = ceil_div(image_size[0], self.stride), ceil_div(image_size[1], self.stride)
        if self.step is not None:
            sw, sh = (self.step, self.step) if isinstance(self.step, (int, float)) else self.step
        elif self.stride is not None:
            sw = sh = self.stride
        else:
            sw, sh = image_size[0] / fw, image_size[1] / fh
        return (int(fw), int(fh)), (float(sw), float(sh))

    def cell_boxes(self, image_size: tuple[int, int]) -> np.ndarray:
        """Widths and heights [K, 2] (normalised) of the K priors of one cell, in Caffe order."""
        wh = []
        for s, min_size in enumerate(self.min_sizes):
            wh.append((min_size, min_size))
            if self.max_sizes:
                side = math.sqrt(min_size * self.max_sizes[s])
                wh.append((side, side))
            for ar in self.expanded_aspect_ratios:
                wh.append((min_size * math.sqrt(ar), min_size / math.sqrt(ar)))
        return np.asarray(wh, dtype=np.float64) / np.asarray(image_size, dtype=np.float64)


def prior_boxes(
    layers: Sequence[PriorBoxLayer],
    *,
    image_size: tuple[int, int],
    clip: Literal["none", "corners", "center"] = "none",
) -> np.ndarray:
    """Centre-form normalised priors [P, 4] float32 of all ``layers`` concatenated in order.

    ``clip="corners"`` is Caffe's ``clip: true`` (clip xmin..ymax to [0, 1], then back to centre form);
    ``clip="center"`` clamps ``(cx, cy, w, h)`` themselves to [0, 1], as ssd.pytorch and UltraFace do. They
    differ for boxes crossing the border, so pick the one the model was trained with.
    """
    if clip not in ("none", "corners", "center"):
        raise ValueError(f"clip must be 'none', 'corners' or 'center', got {clip!r}")
    chunks = []
    for layer in layers:
        (fw, fh), (sw, sh) = layer.resolve_grid(image_size)
        wh = layer.cell_boxes(image_size)  # [K, 2]
        cx = (np.arange(fw, dtype=np.float64) + layer.offset) * sw / image_size[0]
        cy = (np.arange(fh, dtype=np.float64) + layer.offset) * sh / image_size[1]
        gy, gx = np.meshgrid(cy, cx, indexing="ij")  # [fh, fw]: rows outer, columns inner = row-major cells
        k = wh.shape[0]
        centres = np.stack([gx, gy], axis=-1).reshape(-1, 1, 2).repeat(k, axis=1)  # [cells, K, 2]
        sizes = np.broadcast_to(wh, (fh * fw, k, 2))
        chunks.append(np.concatenate([centres, sizes], axis=-1).reshape(-1, 4))
    priors = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 4))
    if clip == "corners":
        priors = corner_to_center(np.clip(center_to_corner(priors), 0.0, 1.0))
    elif clip == "center":
        priors = np.clip(priors, 0.0, 1.0)
    return priors.astype(np.float32)


def num_priors(layers: Sequence[PriorBoxLayer], *, image_size: tuple[int, int]) -> int:
    """Number of priors ``prior_boxes`` returns: sum over layers of cells * priors per cell."""
    total = 0
    for layer in layers:
        (fw, fh), _ = layer.resolve_grid(image_size)
        total += fw * fh * layer.num_priors_per_cell
    return total


def center_to_corner(boxes: np.ndarray) -> np.ndarray:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)`` on the last axis; keeps the dtype."""
    b = np.asarray(boxes)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., 0:2] - half, b[..., 0:2] + half], axis=-1)


def corner_to_center(boxes: np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` on the last axis; keeps the dtype."""
    b = np.asarray(boxes)
    return np.concatenate([(b[..., 0:2] + b[..., 2:4]) / 2, b[..., 2:4] - b[..., 0:2]], axis=-1)


def decode_boxes(
    loc: np.ndarray,
    priors: np.ndarray,
    *,
    variances: Sequence[float] = (0.1, 0.2),
    clip: bool = False,
    form: Literal["corner", "center"] = "corner",
) -> np.ndarray:
    """Decode SSD regressions ``loc`` [..., P, 4] against centre-form ``priors`` [P, 4].

    ``cx = p_cx + l_x * v_x * p_w``, ``w = p_w * exp(l_w * v_w)`` (same for y / h). ``variances`` is
    ``(v_center, v_size)`` or Caffe's four ``(v_x, v_y, v_w, v_h)``. Computed in the dtype of ``loc`` (float32
    for model outputs) in the same operation order as UltraFace's embedded decoder, which it matches to ~1e-7.
    ``clip`` clamps the corner form to [0, 1]. Returns corner form unless ``form="center"``.
    """
    loc = np.asarray(loc)
    dtype = loc.dtype if np.issubdtype(loc.dtype, np.floating) else np.float32
    loc = loc.astype(dtype, copy=False)
    p = np.asarray(priors, dtype=dtype)
    v = _variances(variances, dtype)
    centre = (loc[..., 0:2] * v[0:2]) * p[..., 2:4] + p[..., 0:2]
    size = np.exp(loc[..., 2:4] * v[2:4]) * p[..., 2:4]
    boxes = np.concatenate([centre, size], axis=-1)
    if form == "center" and not clip:
        return boxes
    corners = center_to_corner(boxes)
    if clip:
        corners = np.clip(corners, 0.0, 1.0)
    return corners if form == "corner" else corner_to_center(corners)


def encode_boxes(
    boxes: np.ndarray, priors: np.ndarray, *, variances: Sequence[float] = (0.1, 0.2), eps: float = 1e-12
) -> np.ndarray:
    """Inverse of :func:`decode_boxes`: corner-form normalised ``boxes`` [..., P, 4] -> regression targets.

    Used to build training targets for priors matched to ground truth. ``eps`` guards ``log(0)`` for
    degenerate boxes.
    """
    b = corner_to_center(np.asarray(boxes, dtype=np.float64))
    p = np.asarray(priors, dtype=np.float64)
    v = _variances(variances, np.float64)
    centre = (b[..., 0:2] - p[..., 0:2]) / (p[..., 2:4] * v[0:2])
    size = np.log(np.maximum(b[..., 2:4], eps) / p[..., 2:4]) / v[2:4]
    return np.concatenate([centre, size], axis=-1).astype(np.float32)


def _variances(variances: Sequence[float], dtype: np.dtype) -> np.ndarray:
    values = [float(v) for v in variances]
    if len(values) == 2:
        values = [values[0], values[0], values[1], values[1]]
    if len(values) != 4:
        raise ValueError(f"variances must have 2 (center, size) or 4 (x, y, w, h) values, got {variances}")
    return np.asarray(values, dtype=dtype)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive integers, the feature-map size of an input side ``a`` at stride ``b``."""
    # Integer ceil: math.ceil(a / b) goes through float and can be off by one for large a.
    return -(-int(a) // int(b))
