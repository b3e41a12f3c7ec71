"""Preprocessing: one spec for calibration, evaluation and golden dumps.

The order of operations is fixed and matches what deploy code does with OpenCV:

1. ``image_type``: optionally round-trip the BGR image through YUV 4:2:0 (NV12 / NV21) to include the board
   camera's chroma subsampling (see :mod:`harness.data.yuv`). Done on the decoded image, before anything else.
2. geometry on the uint8 BGR image: ``stretch`` to ``size``, ``short_side`` resize + centre crop, or
   ``letterbox`` (padding with ``pad_value``), with OpenCV ``interpolation``.
3. channel conversion to ``channel_order`` (rgb, bgr, gray).
4. normalisation ``(x - mean) * (1 / std)`` in float32. ``mean`` and ``std`` are in 0..255 pixel units and in
   the **model's channel order** (after step 3), exactly like ncnn's ``substract_mean_normalize``, NNIE's
   ``mean_file`` and torchvision's ``Normalize``. The reciprocal is taken once in float64 and the product done
   in float32 because ncnn and NNIE multiply by ``norm`` / ``data_scale``; dividing instead would differ from
   the board in the last bit.
5. ``layout`` NCHW ([C, H, W]) or NHWC ([H, W, C]).

``dtype="uint8"`` skips step 4 and returns the pixels: that is what a uint8-input runtime (TFLite
``QUANTIZED_UINT8``) is fed, and it interprets them as ``real = (q - mean) / std`` with this same mean/std.

The toolchains spell the normalisation differently; :meth:`PreprocessSpec.from_dict` accepts each spelling
(see :mod:`harness.data.preprocess_keys`) and they all become the same ``mean``/``std``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from harness.data import geometry
from harness.data.geometry import INTERPOLATIONS, ImageMeta
from harness.data.preprocess_keys import VALID_KEYS, canonical_values
from harness.data.yuv import yuv420sp_roundtrip
from harness.errors import ConfigError, DataError

ChannelOrder = Literal["rgb", "bgr", "gray"]
ResizeMode = Literal["stretch", "short_side", "letterbox"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "channel_order": ("rgb", "bgr", "gray"),
    "resize": ("stretch", "short_side", "letterbox"),
    "letterbox_align": ("center", "top_left"),
    "interpolation": tuple(INTERPOLATIONS),
    "layout": ("NCHW", "NHWC"),
    "dtype": ("float32", "uint8"),
    "image_type": ("bgr", "yuv420sp_nv12", "yuv420sp_nv21"),
}


@dataclass(frozen=True, kw_only=True)
class PreprocessSpec:
    """How a decoded uint8 BGR image becomes a model input tensor (see the module docstring for the order).

    ``size`` is (width, height) of the model input. ``mean`` and ``std`` are stored with one value per model
    channel (a single value is broadcast); ``std`` must be non-zero.
    """

    size: tuple[int, int]
    channel_order: ChannelOrder = "bgr"
    resize: ResizeMode = "stretch"
    short_side: int | None = None
    pad_value: float = 0.0
    letterbox_align: Literal["center", "top_left"] = "center"
    interpolation: Literal["bilinear", "nearest", "area", "cubic"] = "bilinear"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8"] = "float32"
    image_type: Literal["bgr", "yuv420sp_nv12", "yuv420sp_nv21"] = "bgr"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"Got preprocessing {name} = {getattr(self, name)!r}", expected=f"one of {', '.join(choices)}"
                )
        size = _int_pair(self.size, "size")
        object.__setattr__(self, "size", size)
        if self.resize == "short_side":
            if self.short_side is None or int(self.short_side) < max(size):
                raise ConfigError(
                    f"Got resize = 'short_side' with short_side = {self.short_side!r} for size {size}",
                    expected="an integer short_side >= the larger side of size (e.g. 256 for a 224x224 crop)",
                )
            object.__setattr__(self, "short_side", int(self.short_side))
        elif self.short_side is not None:
            raise ConfigError(
                f"Got short_side = {self.short_side} with resize = {self.resize!r}",
                expected="short_side only with resize = 'short_side'",
                remedy="remove short_side or set resize = 'short_side'",
            )
        if not 0.0 <= float(self.pad_value) <= 255.0:
            raise ConfigError(f"Got pad_value = {self.pad_value}", expected="a pixel value in 0..255")
        object.__setattr__(self, "pad_value", float(self.pad_value))
        channels = self.channels
        object.__setattr__(self, "mean", _per_channel(self.mean, channels, "mean"))
        std = _per_channel(self.std, channels, "std")
        if any(s == 0.0 or not np.isfinite(s) for s in std):
            raise ConfigError(f"Got std = {list(std)}", expected="non-zero finite values (x is divided by std)")
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "gray" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image (no batch axis)."""
        w, h = self.size
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], *, base_dir: str | Path | None = None) -> PreprocessSpec:
        """Build a spec from a suite's ``[preprocess]`` table, accepting ncnn, NNIE and TFLite spellings.

        ``base_dir`` resolves a relative NNIE ``mean_file`` path (the suite file's folder).
        """
        unknown = [k for k in table if k not in VALID_KEYS]
        if unknown:
            raise ConfigError(
                f"Unknown preprocessing key {unknown[0]!r}",
                expected=f"one of {', '.join(VALID_KEYS)}",
                remedy="check the spelling; toolchain spellings (norm, data_scale, mean_file, mean_values, "
                "std_dev_values, RGB_order) are accepted as they are written in their own config files",
            )
        if "size" not in table:
            raise ConfigError("The preprocessing table has no 'size'", expected="size = [width, height]")
        return cls(**canonical_values(table, base_dir=Path(base_dir) if base_dir is not None else None))

    def to_dict(self) -> dict[str, Any]:
        """Canonical keys only (never the toolchain spellings), TOML/JSON friendly; ``from_dict`` inverts it."""
        out: dict[str, Any] = {
            "size": list(self.size),
            "channel_order": self.channel_order,
            "resize": self.resize,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "dtype": self.dtype,
            "image_type": self.image_type,
        }
        if self.resize == "short_side":
            out["short_side"] = self.short_side
        if self.resize == "letterbox":
            out["pad_value"] = self.pad_value
            out["letterbox_align"] = self.letterbox_align
        return out


def preprocess(image_bgr: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, ImageMeta]:
    """Turn a uint8 BGR [H, W, 3] image into one model input (no batch axis) and its :class:`ImageMeta`."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        got = f"{image_bgr.dtype} {image_bgr.shape}" if isinstance(image_bgr, np.ndarray) else type(image_bgr).__name__
        raise DataError(
            f"Got an image of {got}", expected="uint8 BGR [H, W, 3]", remedy="read images with harness.data.read_image"
        )
    image = image_bgr
    if spec.image_type != "bgr":
        image = yuv420sp_roundtrip(image, spec.image_type)  # type: ignore[arg-type]

    if spec.resize == "stretch":
        image, meta = geometry.resize_stretch(image, spec.size, spec.interpolation)
    elif spec.resize == "short_side":
        assert spec.short_side is not None  # guaranteed by __post_init__
        image, meta = geometry.resize_short_side_crop(image, spec.size, spec.short_side, spec.interpolation)
    else:
        image, meta = geometry.letterbox(
            image, spec.size, spec.interpolation, pad_value=spec.pad_value, align=spec.letterbox_align
        )

    if spec.channel_order == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif spec.channel_order == "gray":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]

    if spec.dtype == "float32":
        mean = np.asarray(spec.mean, dtype=np.float32)
        inv_std = (1.0 / np.asarray(spec.std, dtype=np.float64)).astype(np.float32)
        tensor = (image.astype(np.float32) - mean) * inv_std
    else:
        tensor = image
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor), meta


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec) -> tuple[np.ndarray, list[ImageMeta]]:
    """Preprocess several images and stack them on a new leading batch axis N."""
    if len(images) == 0:
        raise DataError("Got an empty batch", expected="at least one image")
    tensors, metas = zip(*(preprocess(image, spec) for image in images))
    return np.stack(tensors), list(metas)


def _int_pair(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"Got {name} = {value!r}", expected=f"{name} = [width, height] with positive integers")
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and all(v > 0 for v in pair) and all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"Got {name} = {value!r}", expected=f"{name} = [width, height] with positive integers")
    return pair  # type: ignore[return-value]


def _per_channel(value: Any, channels: int, name: str) -> tuple[float, ...]:
    values = [value] if isinstance(value, (int, float)) else list(value)
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"Got {name} = {value!r}", expected="numbers") from None
    if len(floats) == 1:
        return floats * channels
    if len(floats) != channels:
        raise ConfigError(
            f"Got {len(floats)} {name} values {list(floats)} for a {channels}-channel input",
            expected=f"1 or {channels} values, in the model's channel order",
        )
    return floats
