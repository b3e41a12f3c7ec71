#!/usr/bin/env python
"""Synthetic shapes datasets for the bundled demo models: a VOC2007-layout detection set and a
class-folder classification set, both deterministic from one seed.

Why synthetic: the harness needs an end-to-end detection and classification task whose data can be
committed (test + calib under ``suites/assets/``), regenerated bit-for-bit, and trained on in minutes
on a CPU. Real datasets are too large and carry licences; random noise teaches a model nothing, so the
quantization error would not show up in mAP or top-1. Shapes on cluttered, noisy backgrounds, at scales
down to ~8 px, with occlusion and border truncation, give a model that has to work for its accuracy.

Every image is drawn from its own RNG seeded by ``(seed, set, split, index)``, so an image does not
depend on how many other images were asked for: growing the train split never changes test or calib,
and the splits are disjoint by construction. Needs only numpy and OpenCV.

Run ``python tools/make_dataset.py --help``; the rules (boxes, truncated, difficult, sizes) are in
``tools/README.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test", "calib")
# Class lists are in alphabetical order, like the VOC devkit's: harness/data readers fall back to the
# sorted folder/object names when no class list is given, so that order is the one that cannot disagree.
DET_CLASSES = ("circle", "cross", "ring", "square", "star", "triangle")
SHAPE_CLASSES = DET_CLASSES + ("hexagon",)
PATTERN_CLASSES = ("checkerboard", "dots", "stripes_diagonal", "stripes_horizontal", "stripes_vertical")
CLS_CLASSES = tuple(sorted(SHAPE_CLASSES + PATTERN_CLASSES))
DEFAULT_DET_COUNTS: dict[str, int] = {"train": 4000, "val": 300, "test": 300, "calib": 100}
DEFAULT_CLS_COUNTS: dict[str, int] = {"train": 6000, "val": 600, "test": 600, "calib": 240}

# VOC difficult rule, in visible pixels: too small or too little of the object left to judge.
DIFFICULT_MIN_SIDE_PX = 10
DIFFICULT_MIN_VISIBLE_FRACTION = 0.4

DET_SIZE = 160
DET_SIZE_RANGE = (144, 200)
CLS_SIZE_RANGE = (64, 96)
JPEG_QUALITY = 90

# Split codes are the first digit of VOC ids ("300042" = test #42): ids stay numeric like the devkit's,
# unique across splits, and independent of the other splits' counts.
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3, "calib": 4}
_MAX_PER_SPLIT = 100_000
_SET_DET, _SET_CLS = 1, 2


# ----------------------------------------------------------------------------------------- drawing


def _rng(seed: int, which_set: int, split: str, index: int) -> np.random.Generator:
    """One generator per image, so images are independent of the counts of other splits."""
    return np.random.default_rng(np.random.SeedSequence([seed, which_set, _SPLIT_CODE[split], index]))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A BGR colour drawn in HSV so hue is uniform and greys/dark colours still occur."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _luma(bgr: np.ndarray) -> float:
    return float(bgr @ np.array([0.114, 0.587, 0.299], np.float32))


def _contrasting_colour(
    rng: np.random.Generator, against: np.ndarray, *, min_dist: float = 110.0, also_from: np.ndarray | None = None
) -> np.ndarray:
    """A random colour visibly different from ``against`` (and ``also_from``); never tied to the class.

    Needs both a colour distance and some brightness difference: iso-luminant pairs survive in RGB
    but turn into a faint outline after blur, noise and JPEG chroma subsampling.
    """
    refs = [against] if also_from is None else [against, also_from]
    best, best_score = refs[0], -1.0
    for _ in range(32):
        colour = _random_colour(rng)
        score = min(min(float(np.linalg.norm(colour - r)) / min_dist, abs(_luma(colour) - _luma(r)) / 30.0) for r in refs)
        if score >= 1.0:
            return colour
        if score > best_score:
            best, best_score = colour, score
    return best


def _gradient(rng: np.random.Generator, h: int, w: int, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Linear blend c0 -> c1 along a random direction (float32 HxWx3)."""
    angle = rng.uniform(0, 2 * np.pi)
    t = np.arange(w, dtype=np.float32)[None, :] * np.cos(angle) + np.arange(h, dtype=np.float32)[:, None] * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return c0 + t[..., None] * (c1 - c0)


def _background(rng: np.random.Generator, h: int, w: int, *, periodic: bool) -> np.ndarray:
    """Textured clutter so objects must be found by shape, not by being the only edge in the image.

    ``periodic`` stripes are left out of classification images because stripes are classes there.
    """
    img = _gradient(rng, h, w, _random_colour(rng), _random_colour(rng))
    # Low-frequency colour noise: cheap to draw, hard for JPEG to flatten, breaks uniform regions.
    grid = rng.uniform(-1, 1, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3)).astype(np.float32)
    img += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(0, 45)
    if periodic and rng.random() < 0.35:
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(5, 30) + rng.uniform(0, 6.3))
        img += wave[..., None] * rng.uniform(-25, 25, 3).astype(np.float32)
    if rng.random() < 0.6:
        img = _add_blobs(rng, img)
    if rng.random() < 0.35:
        _add_lines(rng, img)
    return img


def _add_blobs(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Soft colour blobs: object-sized distractors without the hard edges of a real object."""
    h, w = img.shape[:2]
    layer = img.copy()
    for _ in range(int(rng.integers(2, 7))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, w // 3)), int(rng.integers(4, h // 3)))
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, _random_colour(rng).tolist(), -1)
    layer = cv2.GaussianBlur(layer, (0, 0), rng.uniform(2, 6))
    alpha = rng.uniform(0.3, 0.8)
    return img * (1 - alpha) + layer * alpha


def _add_lines(rng: np.random.Generator, img: np.ndarray) -> None:
    """Thin straight clutter: edges that belong to no class, so edges alone are not evidence."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        p0 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        p1 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        cv2.line(img, p0, p1, _random_colour(rng).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)


def _finish(rng: np.random.Generator, img: np.ndarray, *, max_noise: float) -> np.ndarray:
    """Sensor-like degradations applied last, over objects and background alike."""
    img = img * rng.uniform(0.8, 1.15) + rng.uniform(-20, 20)
    sigma = rng.uniform(0, max_noise)
    if sigma > 0.5:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _unit_polygons(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Outline(s) of a shape inside the unit circle as (points, fill) pairs; fill 0 cuts a hole.

    The random proportions (star depth, arm width, hole size) vary within a class but never so far
    that one class turns into another.
    """
    def ngon(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
        a = phase + np.arange(n) * 2 * np.pi / n
        return np.stack([np.cos(a), np.sin(a)], 1) * radius

    if name == "circle":
        return [(ngon(48), 255)]
    if name == "square":
        return [(ngon(4, phase=np.pi / 4), 255)]
    if name == "triangle":
        return [(ngon(3) + [0, 0.25], 255)]  # centre the bounding box, not the centroid
    if name == "hexagon":
        return [(ngon(6), 255)]
    if name == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return [(ngon(10) * radii[:, None], 255)]
    if name == "cross":
        k = rng.uniform(0.26, 0.38)
        pts = [(-k, -1), (k, -1), (k, -k), (1, -k), (1, k), (k, k), (k, 1), (-k, 1), (-k, k), (-1, k), (-1, -k), (-k, -k)]
        return [(np.array(pts) * 0.95, 255)]
    if name == "ring":
        return [(ngon(48), 255), (ngon(48, rng.uniform(0.45, 0.62)), 0)]
    raise ValueError(f"Got shape {name!r}. Expected one of {SHAPE_CLASSES}.")


@dataclass(frozen=True)
class _Stamp:
    """A shape's anti-aliased alpha on its own canvas at image offset (x0, y0); also off-image parts."""

    alpha: np.ndarray  # uint8, the full object even where it leaves the image
    x0: int
    y0: int

    @property
    def full_area(self) -> int:
        return int(np.count_nonzero(self.alpha >= 128))

    def on_image(self, h: int, w: int) -> np.ndarray:
        """The alpha pasted into an HxW frame, clipped at the border."""
        out = np.zeros((h, w), np.uint8)
        ah, aw = self.alpha.shape
        ys, xs = max(self.y0, 0), max(self.x0, 0)
        ye, xe = min(self.y0 + ah, h), min(self.x0 + aw, w)
        if ye > ys and xe > xs:
            out[ys:ye, xs:xe] = self.alpha[ys - self.y0 : ye - self.y0, xs - self.x0 : xe - self.x0]
        return out


def _stamp(name: str, rng: np.random.Generator, *, cx: float, cy: float, diameter: float) -> _Stamp:
    """Rasterise a shape at sub-pixel precision with random rotation and mild aspect change."""
    aspect = np.sqrt(rng.uniform(0.8, 1.25))
    angle = rng.uniform(0, 2 * np.pi) if name != "circle" else 0.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = np.array([aspect, 1 / aspect]) * diameter / 2
    polys = [((pts * scale) @ rot.T + [cx, cy], fill) for pts, fill in _unit_polygons(name, rng)]
    allpts = np.concatenate([p for p, _ in polys])
    x0, y0 = int(np.floor(allpts[:, 0].min())) - 2, int(np.floor(allpts[:, 1].min())) - 2
    x1, y1 = int(np.ceil(allpts[:, 0].max())) + 2, int(np.ceil(allpts[:, 1].max())) + 2
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for pts, fill in polys:
        # cv2 samples pixel centres at integer coords; shift=4 keeps 1/16 px of the float geometry.
        fixed = np.round((pts - [x0 + 0.5, y0 + 0.5]) * 16).astype(np.int32)
        cv2.fillPoly(alpha, [fixed], fill, cv2.LINE_AA, 4)
    return _Stamp(alpha, x0, y0)


def _paint(rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray, *, name: str) -> None:
    """Composite one object in place: solid, gradient, or bordered two-tone, all colour-random.

    Circles are never bordered: an outlined disc whose inside is near the background reads as a ring,
    which would make the two classes ambiguous by construction.
    Works on the object's bounding rectangle only: full-frame blending was most of the run time.
    """
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if len(rows) == 0:
        return
    roi = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    alpha, view = alpha[roi], img[roi]
    mask = alpha >= 128
    under = view[mask].mean(0) if mask.any() else view.reshape(-1, 3).mean(0)
    colour = _contrasting_colour(rng, under)
    style = rng.random()
    if style < 0.6 or (name == "circle" and style >= 0.8):
        layer = np.broadcast_to(colour, view.shape)
    elif style < 0.8:
        layer = _gradient(rng, *view.shape[:2], colour, _contrasting_colour(rng, under, min_dist=60.0))
    else:
        # The interior must stand out from the background too, or a bordered circle reads as a ring.
        inner_colour = _contrasting_colour(rng, colour, min_dist=80.0, also_from=under)
        border = max(1, int(round(np.sqrt(mask.sum()) * rng.uniform(0.05, 0.1))))
        inner = cv2.erode(alpha, np.ones((2 * border + 1, 2 * border + 1), np.uint8))
        a_in = (inner.astype(np.float32) / 255)[..., None]
        layer = colour * (1 - a_in) + inner_colour * a_in
    a = (alpha.astype(np.float32) / 255)[..., None]
    view *= 1 - a
    view += layer * a


def _encode(img: np.ndarray, ext: str, *, quality: int = JPEG_QUALITY) -> bytes:
    """Fixed encoder parameters: same pixels and library versions -> same bytes."""
    if ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    else:
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise RuntimeError(f"cv2.imencode({ext!r}) failed")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DetObject:
    """One VOC object: ``box`` is (xmin, ymin, xmax, ymax), 1-based inclusive, of the visible pixels."""

    name: str
    box: tuple[int, int, int, int]
    truncated: bool
    difficult: bool
    visible_fraction: float


def _det_size(rng: np.random.Generator) -> tuple[int, int]:
    """Half the images at the detector's 160x160, half at other sizes/aspects so resize is exercised."""
    if rng.random() < 0.5:
        return DET_SIZE, DET_SIZE
    lo, hi = DET_SIZE_RANGE
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def _place(rng: np.random.Generator, h: int, w: int, name: str) -> _Stamp:
    """Random position and log-uniform size; one in five objects is pushed across a border."""
    diameter = float(np.exp(rng.uniform(np.log(9.0), np.log(0.6 * min(h, w)))))
    # 0.57 d bounds the shape after the aspect stretch, so only the pushed fifth is truncated.
    margin = 0.57 * diameter
    cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
    if rng.random() < 0.2:
        outside = rng.uniform(0.1, 0.65) * diameter
        side = int(rng.integers(4))
        if side == 0:
            cx = diameter / 2 - outside
        elif side == 1:
            cx = w - diameter / 2 + outside
        elif side == 2:
            cy = diameter / 2 - outside
        else:
            cy = h - diameter / 2 + outside
    return _stamp(name, rng, cx=cx, cy=cy, diameter=diameter)


def _visible_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1


def _layout(rng: np.random.Generator, h: int, w: int) -> list[tuple[str, _Stamp, np.ndarray]]:
    """Choose objects back to front; reject a candidate that hides too much of what is already there.

    Occlusion is allowed (that is the point) but capped so every object keeps >= 25% of its pixels
    and a visible box of >= 4 px: below that not even ``difficult`` makes a sensible ground truth.
    """
    placed: list[tuple[str, _Stamp, np.ndarray]] = []  # (class, stamp, alpha on image)
    visible: list[np.ndarray] = []
    target = int(rng.integers(1, 7))
    for _ in range(target * 6):
        if len(placed) == target:
            break
        name = DET_CLASSES[int(rng.integers(len(DET_CLASSES)))]
        stamp = _place(rng, h, w, name)
        alpha = stamp.on_image(h, w)
        cand = alpha >= 128
        new_visible = [v & ~cand for v in visible] + [cand]
        stamps = [s for _, s, _ in placed] + [stamp]
        if all(_acceptable(v, s.full_area) for v, s in zip(new_visible, stamps)):
            placed.append((name, stamp, alpha))
            visible = new_visible
    return placed


def _acceptable(visible: np.ndarray, full_area: int) -> bool:
    box = _visible_box(visible)
    if box is None or full_area == 0:
        return False
    side = min(box[2] - box[0], box[3] - box[1]) + 1
    return side >= 4 and np.count_nonzero(visible) >= 0.25 * full_area


def render_detection_image(rng: np.random.Generator) -> tuple[np.ndarray, list[DetObject]]:
    """One BGR uint8 image and its VOC objects (visible-extent boxes, truncated/difficult flags)."""
    h, w = _det_size(rng)
    img = _background(rng, h, w, periodic=True)
    placed = _layout(rng, h, w)
    masks = [alpha >= 128 for _, _, alpha in placed]
    objects: list[DetObject] = []
    for i, (name, stamp, alpha) in enumerate(placed):
        _paint(rng, img, alpha, name=name)
        visible = masks[i].copy()
        for later in masks[i + 1 :]:
            visible &= ~later
        box = _visible_box(visible)
        assert box is not None  # guaranteed by _layout
        fraction = np.count_nonzero(visible) / stamp.full_area
        side = min(box[2] - box[0], box[3] - box[1]) + 1
        objects.append(
            DetObject(
                name=name,
                box=box,
                truncated=bool(np.count_nonzero(masks[i]) < stamp.full_area),
                difficult=bool(side < DIFFICULT_MIN_SIDE_PX or fraction < DIFFICULT_MIN_VISIBLE_FRACTION),
                visible_fraction=round(float(fraction), 4),
            )
        )
    return _finish(rng, img, max_noise=9.0), objects


def voc_xml(image_id: str, *, width: int, height: int, objects: Sequence[DetObject]) -> bytes:
    """VOC2007 annotation as the devkit writes it (folder, filename, source, size, segmented, objects)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "quant-harness synthetic shapes"
    ET.SubElement(source, "annotation").text = f"tools/make_dataset.py v{GENERATOR_VERSION}"
    ET.SubElement(source, "image").text = "synthetic"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        bndbox = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _check_counts(counts: Mapping[str, int] | None, defaults: Mapping[str, int]) -> dict[str, int]:
    if counts is None:
        return dict(defaults)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"Got splits {sorted(unknown)}. Expected a subset of {SPLITS}.")
    out = {s: int(counts.get(s, 0)) for s in SPLITS}
    bad = {s: n for s, n in out.items() if not 0 <= n < _MAX_PER_SPLIT}
    if bad:
        raise ValueError(f"Got counts {bad}. Expected 0 <= count < {_MAX_PER_SPLIT} per split.")
    return out


def _prepare(root: Path, *, overwrite: bool) -> None:
    """Refuse to mix with an older generation: stale files would survive under ids no list names."""
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"Got existing non-empty {root}. Expected a fresh directory. Try overwrite=True (--overwrite).")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def make_detection_set(
    out: str | Path, *, seed: int, counts: Mapping[str, int] | None = None, overwrite: bool = False
) -> Path:
    """Write ``out/VOCdevkit/VOC2007`` (JPEGImages, Annotations, ImageSets/Main) and return its path.

    ``counts`` maps split -> images; splits not given get none (``None`` means the defaults).
    """
    counts = _check_counts(counts, DEFAULT_DET_COUNTS)
    voc = Path(out) / "VOCdevkit" / "VOC2007"
    _prepare(voc, overwrite=overwrite)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    per_split: dict[str, list[tuple[str, list[DetObject]]]] = {}
    for split in SPLITS:
        rows = per_split.setdefault(split, [])
        for index in range(counts[split]):
            image_id = f"{_SPLIT_CODE[split]}{index:05d}"
            img, objects = render_detection_image(_rng(seed, _SET_DET, split, index))
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(_encode(img, ".jpg"))
            xml = voc_xml(image_id, width=img.shape[1], height=img.shape[0], objects=objects)
            (voc / "Annotations" / f"{image_id}.xml").write_bytes(xml)
            rows.append((image_id, objects))
    _write_image_sets(voc / "ImageSets" / "Main", per_split)
    (voc / "classes.txt").write_text("".join(f"{c}\n" for c in DET_CLASSES))
    _write_manifest(voc / "dataset.json", kind="detection", seed=seed, counts=counts)
    return voc


def _write_image_sets(main: Path, per_split: Mapping[str, list[tuple[str, list[DetObject]]]]) -> None:
    """Split lists plus the devkit's per-class lists (1 present, 0 only difficult, -1 absent)."""
    lists = {s: rows for s, rows in per_split.items() if rows}
    if "train" in lists and "val" in lists:
        lists["trainval"] = list(lists["train"]) + list(lists["val"])
    for split, rows in lists.items():
        (main / f"{split}.txt").write_text("".join(f"{image_id}\n" for image_id, _ in rows))
        for cls in DET_CLASSES:
            lines = []
            for image_id, objects in rows:
                flags = [o.difficult for o in objects if o.name == cls]
                label = -1 if not flags else (0 if all(flags) else 1)
                lines.append(f"{image_id} {label:2d}\n")
            (main / f"{cls}_{split}.txt").write_text("".join(lines))


def _write_manifest(path: Path, *, kind: str, seed: int, counts: Mapping[str, int]) -> None:
    """Provenance next to the data (no timestamps: the output must be byte-identical on rerun)."""
    manifest = {
        "generator": "tools/make_dataset.py",
        "generator_version": GENERATOR_VERSION,
        "kind": kind,
        "seed": seed,
        "counts": dict(counts),
        "classes": list(DET_CLASSES if kind == "detection" else CLS_CLASSES),
        "difficult_rule": f"visible box side < {DIFFICULT_MIN_SIDE_PX} px or visible fraction < {DIFFICULT_MIN_VISIBLE_FRACTION}",
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n")


# ----------------------------------------------------------------------------------- classification


def _pattern(name: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A two-level pattern in [0, 1] (float32 HxW) with soft edges so it does not alias."""
    period = rng.uniform(6, 14)
    if name == "stripes_horizontal":
        angle = np.pi / 2 + rng.uniform(-0.2, 0.2)
    elif name == "stripes_vertical":
        angle = rng.uniform(-0.2, 0.2)
    elif name == "stripes_diagonal":
        angle = rng.choice([np.pi / 4, 3 * np.pi / 4]) + rng.uniform(-0.2, 0.2)
    else:
        angle = rng.uniform(-0.35, 0.35)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 1)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period + rng.uniform(0, 1)
    soft = period / 2  # edge width of about one pixel
    if name.startswith("stripes"):
        return np.clip(0.5 + soft * np.sin(2 * np.pi * u), 0, 1)
    if name == "checkerboard":
        return np.clip(0.5 + soft * np.sin(np.pi * u) * np.sin(np.pi * v), 0, 1)
    if name == "dots":
        d = np.hypot(u - np.round(u), v - np.round(v)) * period
        return np.clip(rng.uniform(0.22, 0.32) * period - d + 0.5, 0, 1)
    raise ValueError(f"Got pattern {name!r}. Expected one of {PATTERN_CLASSES}.")


def _cls_size(rng: np.random.Generator) -> tuple[int, int]:
    """Square half the time; otherwise up to 3:2 so resize-short-side + centre-crop is exercised."""
    lo, hi = CLS_SIZE_RANGE
    short = int(rng.integers(lo, hi + 1))
    if rng.random() < 0.5:
        return short, short
    long_ = int(rng.integers(short, min(hi, int(short * 1.5)) + 1))
    return (short, long_) if rng.random() < 0.5 else (long_, short)


def render_classification_image(rng: np.random.Generator, name: str) -> np.ndarray:
    """One BGR uint8 image of class ``name``, kept inside the centre crop of the short side."""
    h, w = _cls_size(rng)
    short = min(h, w)
    img = _background(rng, h, w, periodic=False)
    # A 72 -> 64 centre crop keeps 89% of the short side; stay inside ~85% so the label survives.
    jitter = 0.08 * short
    cx = w / 2 + rng.uniform(-jitter, jitter)
    cy = h / 2 + rng.uniform(-jitter, jitter)
    if name in PATTERN_CLASSES:
        region = _stamp(str(rng.choice(["circle", "square", "hexagon"])), rng, cx=cx, cy=cy, diameter=rng.uniform(0.75, 0.95) * short)
        alpha = region.on_image(h, w).astype(np.float32)[..., None] / 255
        under = img.reshape(-1, 3).mean(0)
        c0 = _contrasting_colour(rng, under, min_dist=60.0)
        c1 = _contrasting_colour(rng, c0, min_dist=120.0)
        p = _pattern(name, rng, h, w)[..., None]
        img = img * (1 - alpha) + (c0 * (1 - p) + c1 * p) * alpha
    else:
        diameter = rng.uniform(0.45, 0.7) * short
        _paint(rng, img, _stamp(name, rng, cx=cx, cy=cy, diameter=diameter).on_image(h, w), name=name)
    return _finish(rng, img, max_noise=7.0)


def make_classification_set(
    out: str | Path, *, seed: int, counts: Mapping[str, int] | None = None, overwrite: bool = False
) -> Path:
    """Write ``out/classification/<split>/<class>/<split>_<index>.jpg`` and return the root.

    Classes are balanced by cycling (image i has class i mod K), so any count gives a near-even split.
    Also writes ``classes.txt`` and ``<split>.txt`` lists (``<split>/<class>/<file> <label>``, relative to
    the list's own folder as caffe-style list readers expect).
    """
    counts = _check_counts(counts, DEFAULT_CLS_COUNTS)
    root = Path(out) / "classification"
    _prepare(root, overwrite=overwrite)
    for split in SPLITS:
        if counts[split] == 0:
            continue
        for cls in CLS_CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(counts[split]):
            label = index % len(CLS_CLASSES)
            cls = CLS_CLASSES[label]
            img = render_classification_image(_rng(seed, _SET_CLS, split, index), cls)
            rel = f"{split}/{cls}/{split}_{index:05d}.jpg"
            (root / rel).write_bytes(_encode(img, ".jpg"))
            lines.append(f"{rel} {label}\n")
        (root / f"{split}.txt").write_text("".join(lines))
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLS_CLASSES))
    _write_manifest(root / "dataset.json", kind="classification", seed=seed, counts=counts)
    return root


# ------------------------------------------------------------------------------------ contact sheets


def detection_contact_sheet(voc: str | Path, image_ids: Sequence[str], out_png: str | Path, *, cols: int = 4) -> None:
    """Tiles of images at 2x with boxes: green normal, red difficult, magenta truncated (eyeball check)."""
    voc = Path(voc)
    tiles = []
    for image_id in image_ids:
        img = cv2.imread(str(voc / "JPEGImages" / f"{image_id}.jpg"))
        img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        for obj in ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot().iter("object"):
            box = [int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            colour = (0, 0, 255) if obj.findtext("difficult") == "1" else (255, 0, 255) if obj.findtext("truncated") == "1" else (0, 255, 0)
            # 1-based inclusive -> pixel edges at 2x: left edge of xmin, right edge of xmax.
            cv2.rectangle(img, (2 * box[0] - 2, 2 * box[1] - 2), (2 * box[2] - 1, 2 * box[3] - 1), colour, 1)
            cv2.putText(img, obj.findtext("name")[:3], (2 * box[0] - 2, 2 * box[1] + 8), cv2.FONT_HERSHEY_PLAIN, 0.8, colour, 1)
        tiles.append(_pad(img, 400, 400))
    cv2.imwrite(str(out_png), _grid(tiles, cols))


def classification_contact_sheet(root: str | Path, split: str, out_png: str | Path, *, per_class: int = 8) -> None:
    """One row per class, ``per_class`` samples each, scaled to 96 px high, with the class name."""
    root = Path(root)
    rows = []
    for cls in CLS_CLASSES:
        files = sorted((root / split / cls).glob("*.jpg"))[:per_class]
        label = np.full((96, 150, 3), 255, np.uint8)
        cv2.putText(label, cls, (2, 52), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 1)
        cells = [label] + [_pad(cv2.resize(cv2.imread(str(f)), None, fx=1, fy=1), 96, 100) for f in files]
        rows.append(np.hstack(cells + [np.full((96, 100, 3), 255, np.uint8)] * (per_class - len(files))))
    cv2.imwrite(str(out_png), np.vstack(rows))


def _pad(img: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), 255, np.uint8)
    ih, iw = min(h, img.shape[0]), min(w, img.shape[1])
    out[:ih, :iw] = img[:ih, :iw]
    return out


def _grid(tiles: Sequence[np.ndarray], cols: int) -> np.ndarray:
    blank = np.full_like(tiles[0], 255)
    tiles = list(tiles) + [blank] * (-len(tiles) % cols)
    return np.vstack([np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)])


# ----------------------------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output directory (VOCdevkit/ and classification/ go inside)")
    parser.add_argument("--seed", type=int, default=0, help="same seed + counts -> byte-identical files (default 0)")
    for prefix, defaults in (("det", DEFAULT_DET_COUNTS), ("cls", DEFAULT_CLS_COUNTS)):
        for split in SPLITS:
            what = "detection" if prefix == "det" else "classification"
            parser.add_argument(
                f"--{prefix}-{split}", type=int, default=defaults[split], metavar="N",
                help=f"{what} images in {split} (default {defaults[split]})",
            )
    parser.add_argument("--only", choices=("det", "cls"), help="make only one of the two sets")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing VOC2007/ or classification/")
    parser.add_argument("--preview", type=Path, metavar="DIR", help="also write contact_det.png / contact_cls.png here")
    return parser.parse_args(argv)


def _preview_split(counts: Mapping[str, int]) -> str | None:
    """Preview the test split when there is one: that is the data that gets committed."""
    return next((s for s in ("test", "calib", "val", "train") if counts[s]), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.only != "cls":
        counts = {s: getattr(args, f"det_{s}") for s in SPLITS}
        start = time.perf_counter()
        voc = make_detection_set(args.out, seed=args.seed, counts=counts, overwrite=args.overwrite)
        print(f"detection: {sum(counts.values())} images in {time.perf_counter() - start:.1f} s -> {voc}")
        first = _preview_split(counts)
        if args.preview and first:
            ids = (voc / "ImageSets" / "Main" / f"{first}.txt").read_text().split()[:16]
            detection_contact_sheet(voc, ids, args.preview / "contact_det.png")
    if args.only != "det":
        counts = {s: getattr(args, f"cls_{s}") for s in SPLITS}
        start = time.perf_counter()
        root = make_classification_set(args.out, seed=args.seed, counts=counts, overwrite=args.overwrite)
        print(f"classification: {sum(counts.values())} images in {time.perf_counter() - start:.1f} s -> {root}")
        first = _preview_split(counts)
        if args.preview and first:
            classification_contact_sheet(root, first, args.preview / "contact_cls.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
