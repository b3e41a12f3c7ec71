"""The geometric part of preprocessing: resize, short-side + centre crop, letterbox.

Every mode is an axis-aligned affine map ``input = original * scale + offset`` (continuous pixel
coordinates, where pixel ``i`` covers ``[i, i + 1)``; that is also how ``cv2.resize`` aligns pixel
centres). :class:`ImageMeta` records that map so detections made on the model input can be mapped back to
the original image, where the ground truth lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INTERPOLATIONS: dict[str, int] = {
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
}


@dataclass(frozen=True, kw_only=True)
class ImageMeta:
    """Where a model input came from.

    ``original_size`` and ``input_size`` are (width, height). The forward map is
    ``x_input = x_original * scale[0] + offset[0]`` (same for y). ``offset`` is positive for letterbox
    padding and negative for a centre crop.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]

    def to_original(self, boxes: np.ndarray, *, normalized: bool = False, clip: bool = True) -> np.ndarray:
        """Map corner boxes [..., 4] (x1, y1, x2, y2) from model-input to original-image pixel coordinates.

        ``normalized=True`` means the boxes are fractions of the model input (what SSD decoders produce).
        ``clip`` clamps to the original image, because letterbox padding and crops can otherwise yield
        boxes partly outside the photo.
        """
        out = np.array(boxes, dtype=np.float64, copy=True)
        if normalized:
            out[..., 0::2] *= self.input_size[0]
            out[..., 1::2] *= self.input_size[1]
        out[..., 0::2] = (out[..., 0::2] - self.offset[0]) / self.scale[0]
        out[..., 1::2] = (out[..., 1::2] - self.offset[1]) / self.scale[1]
        if clip:
            out[..., 0::2] = np.clip(out[..., 0::2], 0.0, self.original_size[0])
            out[..., 1::2] = np.clip(out[..., 1::2], 0.0, self.original_size[1])
        return out

    def to_input(self, boxes: np.ndarray, *, normalized: bool = False) -> np.ndarray:
        """Inverse of :meth:`to_original` (without clipping): original pixels -> model input."""
        out = np.array(boxes, dtype=np.float64, copy=True)
        out[..., 0::2] = out[..., 0::2] * self.scale[0] + self.offset[0]
        out[..., 1::2] = out[..., 1::2] * self.scale[1] + self.offset[1]
        if normalized:
            out[..., 0::2] /= self.input_size[0]
            out[..., 1::2] /= self.input_size[1]
        return out


def resize_stretch(image: np.ndarray, size: tuple[int, int], interpolation: str) -> tuple[np.ndarray, ImageMeta]:
    """Resize to exactly ``size`` = (W, H), ignoring aspect ratio (UltraFace, most SSDs)."""
    h, w = image.shape[:2]
    out = _resize(image, size, interpolation)
    return out, ImageMeta(original_size=(w, h), input_size=size, scale=(size[0] / w, size[1] / h), offset=(0.0, 0.0))


def resize_short_side_crop(
    image: np.ndarray, size: tuple[int, int], short_side: int, interpolation: str
) -> tuple[np.ndarray, ImageMeta]:
    """Resize the short side to ``short_side`` then centre-crop ``size`` (the ImageNet 256 -> 224 recipe).

    Sizes follow torchvision so a model trained there sees the same geometry: the long side becomes
    ``int(short_side * long / short)`` (truncated), and the crop origin is ``int(round((resized - crop) / 2))``.
    """
    h, w = image.shape[:2]
    if w <= h:
        new_w, new_h = short_side, int(short_side * h / w)
    else:
        new_w, new_h = int(short_side * w / h), short_side
    resized = _resize(image, (new_w, new_h), interpolation)
    left = int(round((new_w - size[0]) / 2.0))
    top = int(round((new_h - size[1]) / 2.0))
    out = np.ascontiguousarray(resized[top : top + size[1], left : left + size[0]])
    meta = ImageMeta(
        original_size=(w, h), input_size=size, scale=(new_w / w, new_h / h), offset=(-float(left), -float(top))
    )
    return out, meta


def letterbox(
    image: np.ndarray, size: tuple[int, int], interpolation: str, *, pad_value: float, align: str
) -> tuple[np.ndarray, ImageMeta]:
    """Resize keeping the aspect ratio so the image fits in ``size``, then pad with ``pad_value``.

    ``align="center"`` splits the padding (YOLO-style, the odd pixel goes right/bottom); ``"top_left"``
    puts all of it right/bottom (nanodet/ncnn demos), which keeps box offsets at zero.
    """
    h, w = image.shape[:2]
    ratio = min(size[0] / w, size[1] / h)
    new_w = min(size[0], max(1, int(round(w * ratio))))
    new_h = min(size[1], max(1, int(round(h * ratio))))
    resized = _resize(image, (new_w, new_h), interpolation)
    if align == "center":
        left, top = (size[0] - new_w) // 2, (size[1] - new_h) // 2
    else:
        left, top = 0, 0
    out = cv2.copyMakeBorder(
        resized,
        top,
        size[1] - new_h - top,
        left,
        size[0] - new_w - left,
        cv2.BORDER_CONSTANT,
        value=(pad_value,) * 4,
    )
    meta = ImageMeta(original_size=(w, h), input_size=size, scale=(new_w / w, new_h / h), offset=(float(left), float(top)))
    return out, meta


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image  # cv2.resize to the same size is an exact copy for every mode; skip the work
    return cv2.resize(image, tuple(size), interpolation=INTERPOLATIONS[interpolation])

