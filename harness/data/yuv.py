"""Simulating a board camera path: BGR -> YUV 4:2:0 semi-planar (NV12 / NV21) -> BGR.

NNIE and most NPU SDKs are fed YUV420SP frames straight from the ISP, so the network never sees full
chroma resolution. Converting the evaluation images through 4:2:0 and back puts that chroma-subsampling
loss into the fp32 reference and the quantized run alike, so it is not mistaken for quantization error.

OpenCV (4.x and 5.x) can encode BGR only to planar I420 (Y, then all U, then all V) but decodes the
semi-planar layouts, so we build NV12 (Y, then interleaved U V) / NV21 (Y, then interleaved V U) from the
I420 planes and decode them with OpenCV's own NV12/NV21 decoders: the colour matrix (BT.601, as OpenCV
implements it) is whatever OpenCV uses in both directions, and the layout code is really exercised.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

YuvLayout = Literal["yuv420sp_nv12", "yuv420sp_nv21"]


def bgr_to_yuv420sp(image_bgr: np.ndarray, layout: YuvLayout) -> np.ndarray:
    """Encode an even-sized uint8 BGR image as a [H*3/2, W] uint8 NV12 or NV21 buffer."""
    height, width = image_bgr.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 needs even width and height, got {width}x{height}")
    i420 = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_I420)  # [H*3/2, W]: Y | U (H/2*W/2) | V (H/2*W/2)
    y = i420[:height]
    chroma = i420[height:].reshape(-1)
    quarter = (height // 2) * (width // 2)
    u, v = chroma[:quarter], chroma[quarter:]
    first, second = (u, v) if layout == "yuv420sp_nv12" else (v, u)
    interleaved = np.empty(2 * quarter, dtype=np.uint8)
    interleaved[0::2], interleaved[1::2] = first, second
    return np.concatenate([y, interleaved.reshape(height // 2, width)], axis=0)


def yuv420sp_to_bgr(buffer: np.ndarray, layout: YuvLayout) -> np.ndarray:
    """Decode an NV12 / NV21 buffer of shape [H*3/2, W] to uint8 BGR [H, W, 3]."""
    code = cv2.COLOR_YUV2BGR_NV12 if layout == "yuv420sp_nv12" else cv2.COLOR_YUV2BGR_NV21
    return cv2.cvtColor(buffer, code)


def yuv420sp_roundtrip(image_bgr: np.ndarray, layout: YuvLayout) -> np.ndarray:
    """BGR -> NV12/NV21 -> BGR, for any image size.

    Odd sizes (a camera never produces them, a JPEG may) are handled by replicating the last row/column to
    make the size even and cropping back afterwards, so the output always has the input's shape.
    """
    height, width = image_bgr.shape[:2]
    pad_bottom, pad_right = height % 2, width % 2
    padded = cv2.copyMakeBorder(image_bgr, 0, pad_bottom, 0, pad_right, cv2.BORDER_REPLICATE)
    decoded = yuv420sp_to_bgr(bgr_to_yuv420sp(padded, layout), layout)
    return np.ascontiguousarray(decoded[:height, :width])
