"""Reading images exactly the way deployment code does.

Every deploy pipeline we replace (ncnn demos, bmrt samples, nnie_mapper's calibration loader, caffe-int8
tools) reads images with ``cv2.imread(path, IMREAD_COLOR)``. The harness must see the same pixels, otherwise
a "quantization loss" could really be a decoding difference. So :func:`read_image` is a thin, strict
wrapper around OpenCV's IMREAD_COLOR decoder whose behaviour is pinned down by tests:

* grayscale files are replicated to three identical BGR channels;
* RGBA / BGRA files have their alpha channel **dropped, not composited** (what ``cv2.imread`` does; a
  transparent pixel keeps its stored colour). Compositing onto white or black would invent pixels that the
  deployed model never sees;
* 16-bit files are reduced to 8 bits by ``>> 8`` (truncation, OpenCV's rule), not by ``/ 257`` rounding;
* EXIF orientation is applied exactly once, by OpenCV (IMREAD_COLOR honours it in OpenCV 4 and 5 for both
  ``imread`` and ``imdecode``; we never rotate again ourselves);
* paths are read with ``np.fromfile`` + ``cv2.imdecode`` because ``cv2.imread`` cannot open non-ASCII paths
  on Windows and silently returns ``None`` for every failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from harness.errors import ImageReadError

#: Extensions treated as images when listing folders (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# IMREAD_COLOR is the deploy behaviour described above; spelled out once so tests can refer to it.
_DECODE_FLAGS = cv2.IMREAD_COLOR


def read_image(path: str | Path) -> np.ndarray:
    """Read ``path`` as a contiguous uint8 BGR array of shape [H, W, 3].

    Raises :class:`ImageReadError` naming the path when the file is missing, is a directory, is empty or
    cannot be decoded (OpenCV itself would just return ``None``).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(
            f"Image {path} does not exist",
            expected="an existing image file",
            remedy="check the dataset root and the list/annotation file that names this image",
        )
    if not path.is_file():
        raise ImageReadError(f"Image path {path} is not a file", expected="an image file, not a directory")
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"Cannot read {path}: {exc}", remedy="check file permissions") from exc
    return decode_image(raw, source=str(path))


def decode_image(data: bytes | np.ndarray, *, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) with the same rules as :func:`read_image`."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise ImageReadError(f"Image {source} is empty (0 bytes)", expected="an encoded image (JPEG, PNG, ...)")
    image = cv2.imdecode(buf, _DECODE_FLAGS)
    if image is None:
        raise ImageReadError(
            f"OpenCV cannot decode {source} ({buf.size} bytes)",
            expected="a readable JPEG, PNG, BMP, TIFF or WebP image",
            remedy="open the file in an image viewer; it may be truncated, an LFS pointer or an HTML page",
        )
    # IMREAD_COLOR already guarantees 3 channels and uint8; asserting it keeps a future flag change honest.
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageReadError(f"Decoding {source} gave {image.dtype} {image.shape}", expected="uint8 HxWx3")
    return np.ascontiguousarray(image)


def is_image_file(path: str | Path, *, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> bool:
    """True when the file name ends in one of ``extensions`` (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    return suffix in {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}


def list_images(
    folder: str | Path, *, extensions: Iterable[str] = IMAGE_EXTENSIONS, recursive: bool = False
) -> list[Path]:
    """Image files under ``folder``, sorted by their path relative to it (byte-wise, so the order does not
    depend on the file system or the locale). Hidden files (``.name``) are skipped: macOS leaves ``._x.jpg``
    resource forks next to real images and they do not decode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"Image folder {folder} does not exist or is not a directory")
    exts = tuple(extensions)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = [
        p
        for p in candidates
        if p.is_file() and not p.name.startswith(".") and is_image_file(p, extensions=exts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix().encode("utf-8"))
