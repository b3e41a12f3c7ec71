"""Probe images: fp32 and quantized predictions on the same picture, side by side.

Why: a drop of 3 mAP points is abstract; the same image with a box missing or shifted in the quantized
panel is what convinces a reader (and often shows the cause: small objects, low-contrast classes).
Boxes are drawn with OpenCV onto the decoded JPEG and re-encoded as JPEG (small, as given). OpenCV's
font is ASCII-only, so each box carries a number and ASCII-folded label; the exact (escaped) label and
score are listed under the image in HTML, where any script renders correctly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from harness.report.fmt import as_float, esc, note, num

MAX_WIDTH = 360
MAX_BOXES = 20
THUMB = 160
#: Small probes (demo sets use 70-200 px images) are enlarged up to this factor, so labels drawn at a
#: fixed font size do not cover the objects they name.
MAX_UPSCALE = 2.0


def label_name(label: Any, class_names: Sequence[Any]) -> str:
    """A detection label as text: an int index is looked up in ``class_names``, anything else shown as is."""
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def decode_jpeg(data: Any) -> np.ndarray | None:
    """The BGR image inside a base64 JPEG string, or None when it is missing or not an image."""
    if not isinstance(data, str) or not data:
        return None
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    return img if img is not None and img.size else None


def jpeg_uri(img: np.ndarray, quality: int = 82) -> str:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any 8-bit BGR image
        raise RuntimeError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    """``img`` scaled by ``scale``: area averaging to shrink, bilinear to enlarge."""
    if abs(scale - 1.0) < 1e-3:
        return img
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _color(name: str) -> tuple[int, int, int]:
    """A stable colour per class, so a class has the same colour in the fp32 and the quantized panel."""
    h = hashlib.sha1(name.encode("utf-8")).digest()
    hsv = np.uint8([[[h[0] % 180, 200, 220]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _ascii(text: str, limit: int = 18) -> str:
    text = text.encode("ascii", "replace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "~"


def _top(dets: Any, limit: int) -> list[Mapping[str, Any]]:
    rows = [d for d in dets if isinstance(d, Mapping)] if isinstance(dets, list) else []
    return sorted(rows, key=lambda d: -(as_float(d.get("score")) or 0.0))[:limit]


def draw_detections(img: np.ndarray, dets: list[Mapping[str, Any]], class_names: Sequence[Any],
                    scale: float) -> np.ndarray:
    """A copy of ``img`` (already resized by ``scale``) with numbered boxes."""
    out = img.copy()
    for k, det in enumerate(dets, 1):
        box = det.get("box")
        if not isinstance(box, list) or len(box) != 4 or any(as_float(v) is None for v in box):
            continue
        x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in box)
        name = label_name(det.get("label"), class_names)
        color = _color(name)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        text = f"{k} {_ascii(name)} {num(det.get('score'), '.2f')}".replace("\u2212", "-")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = max(y1, th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base - 2), (x1 + tw + 2, ty), color, -1)
        cv2.putText(out, text, (x1 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _det_list(dets: list[Mapping[str, Any]], class_names: Sequence[Any]) -> str:
    if not dets:
        return '<p class="note">no detections</p>'
    items = "".join(f"<li>{esc(label_name(d.get('label'), class_names))} "
                    f"<span class=\"num\">{esc(num(d.get('score'), '.3f'))}</span></li>" for d in dets)
    return f'<ol class="dets">{items}</ol>'


def detection_probe_html(probe: Mapping[str, Any], class_names: Sequence[Any]) -> str:
    """One probe: image name, then fp32 and quantized panels with their detection lists."""
    title = f'<div class="probe-title">{esc(probe.get("image") or "probe")}</div>'
    img = decode_jpeg(probe.get("jpeg_base64"))
    if img is None:
        return f'<div class="probe">{title}{note("image missing or not a JPEG")}</div>'
    scale = min(MAX_UPSCALE, MAX_WIDTH / max(img.shape[1], 1), 1.5 * MAX_WIDTH / max(img.shape[0], 1))
    img = _resize(img, scale)
    panels = []
    for key in ("fp32", "quantized"):
        dets = _top(probe.get(key), MAX_BOXES)
        uri = jpeg_uri(draw_detections(img, dets, class_names, scale))
        panels.append(f'<figure class="panel"><figcaption>{key}</figcaption>'
                      f'<img src="{uri}" alt="{key} detections on {esc(probe.get("image"))}">'
                      f"{_det_list(dets, class_names)}</figure>")
    return f'<div class="probe">{title}<div class="row">{"".join(panels)}</div></div>'


def classification_probe_html(probe: Mapping[str, Any], class_names: Sequence[Any]) -> str:
    """One probe: a thumbnail, then fp32 and quantized top-5 side by side; a changed top-1 is marked."""
    img = decode_jpeg(probe.get("jpeg_base64"))
    if img is not None:
        img = _resize(img, min(MAX_UPSCALE, THUMB / max(img.shape[:2])))
        thumb = f'<img class="thumb" src="{jpeg_uri(img)}" alt="{esc(probe.get("image"))}">'
    else:
        thumb = note("image missing or not a JPEG")
    fp32, quant = _top(probe.get("fp32"), 5), _top(probe.get("quantized"), 5)
    changed = bool(fp32 and quant and fp32[0].get("label") != quant[0].get("label"))
    rows = []
    for k in range(max(len(fp32), len(quant))):
        cells = []
        for dets in (fp32, quant):
            if k < len(dets):
                cells.append(f"<td>{esc(label_name(dets[k].get('label'), class_names))}</td>"
                             f"<td class=\"num\">{esc(num(dets[k].get('score'), '.3f'))}</td>")
            else:
                cells.append("<td></td><td></td>")
        rows.append(f"<tr><td class=\"num\">{k + 1}</td>{''.join(cells)}</tr>")
    flag = '<p class="bad-t">\u2717 top-1 changed</p>' if changed else ""
    table = ("<table class=\"top5\"><tr><th>#</th><th colspan=2>fp32</th><th colspan=2>quantized</th></tr>"
             f"{''.join(rows)}</table>") if rows else note("no predictions recorded")
    return (f'<div class="probe"><div class="probe-title">{esc(probe.get("image") or "probe")}</div>'
            f'<div class="row">{thumb}<div>{flag}{table}</div></div></div>')
