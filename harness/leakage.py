"""Calibration / evaluation leakage: images that are in both sets.

Why it matters: calibration fits the quantisation ranges to exactly the calibration images, so the
quantisation error is smallest on them. If they are also evaluation images, the int8 model is scored partly
on data its ranges were tuned to: its metric is biased upwards, the fp32 - int8 drop looks smaller than it
will be on unseen data, and in small sets an int8 model can even appear to beat fp32.

Three levels of "same image", checked cheapest first:

1. same resolved path (symlinks and ``..`` resolved);
2. same file bytes under another name (BLAKE2b of the bytes; only files of equal size are hashed, so
   this costs nothing when sizes differ);
3. same decoded pixels (BLAKE2b of shape + BGR pixels from :func:`harness.data.read_image`): catches a
   JPEG re-saved as PNG (lossless), a copy with different metadata, or the same image at another path.
   A *lossy* re-encode (JPEG at another quality, or resized) changes pixels and is not detected: that
   would need perceptual hashing, whose false positives (near-duplicate frames of one video) we would
   rather not fail builds on.

Every image is decoded once for level 3 (file-size grouping cannot find re-encoded copies, whose sizes
differ); files already known to be byte-identical are decoded once for the group. Measured on this machine:
about 0.4 s for 400 small JPEGs (see tests/test_leakage.py); decoding dominates, which is why ``pixels=False``
exists for very large sets.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.data.images import read_image
from harness.errors import HarnessError
from harness.gates import Bound, Verdict, check_max

Reason = Literal["same path", "same bytes", "same pixels"]
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LeakagePair:
    """One calibration image that is also an evaluation image, and why we think so."""

    calibration: Path
    evaluation: Path
    reason: Reason


@dataclass(frozen=True)
class LeakageReport:
    pairs: tuple[LeakagePair, ...]
    n_calibration: int
    n_evaluation: int
    unreadable: tuple[Path, ...] = field(default=())  # could not be decoded: pixel level not checked

    def __bool__(self) -> bool:
        """True when there is *no* leakage (like a passed verdict)."""
        return not self.pairs

    def as_verdict(self, *, bound: Bound | float = Bound(0, "default: harness; no overlap allowed")) -> Verdict:
        """A ``leakage`` verdict on the number of overlapping evaluation images."""
        n_eval = len({p.evaluation for p in self.pairs})
        verdict = check_max("calibration_overlap_max", n_eval, bound, check="leakage")
        if verdict.passed:
            msg = (f"leakage passed: {n_eval} of {self.n_evaluation} evaluation images are among the "
                   f"{self.n_calibration} calibration images (allowed {verdict.bound:g})")
            return _with(verdict, msg, "nothing to do")
        examples = "; ".join(f"{p.calibration.name} = {p.evaluation.name} ({p.reason})" for p in self.pairs[:3])
        msg = (f"leakage FAILED: {n_eval} of {self.n_evaluation} evaluation images are also calibration images "
               f"(allowed {verdict.bound:g}), e.g. {examples}. Calibration fits the int8 ranges to exactly those "
               f"images, so their quantisation error is lowest and the fp32 - int8 drop looks smaller than on "
               f"unseen data")
        remedy = ("calibrate on a disjoint split (e.g. VOC trainval for a test evaluation), or raise "
                  "[gates] calibration_overlap_max if the overlap is deliberate")
        return _with(verdict, msg, remedy)


def _with(v: Verdict, message: str, remedy: str) -> Verdict:
    return Verdict(check=v.check, gate=v.gate, passed=v.passed, observed=v.observed, bound=v.bound, op=v.op,
                   source=v.source, least_passing=v.least_passing, message=message, remedy=remedy)


def find_leakage(
    calibration_paths: Iterable[str | Path], evaluation_paths: Iterable[str | Path], *, pixels: bool = True
) -> LeakageReport:
    """Pairs (calibration, evaluation) that are the same image by path, bytes or (``pixels``) decoded pixels.

    Each pair is reported once, with the cheapest reason that proves it.
    """
    calib = [Path(p) for p in calibration_paths]
    evals = [Path(p) for p in evaluation_paths]
    real = {p: Path(os.path.realpath(p)) for p in {*calib, *evals}}
    found: dict[tuple[Path, Path], Reason] = {}

    by_real: dict[Path, list[Path]] = defaultdict(list)
    for c in calib:
        by_real[real[c]].append(c)
    for e in evals:
        for c in by_real.get(real[e], ()):
            found.setdefault((c, e), "same path")

    unique = sorted({real[p] for p in [*calib, *evals]})
    sizes = {r: _size(r) for r in unique}
    by_size: dict[int, list[Path]] = defaultdict(list)
    for r in unique:
        if sizes[r] is not None:
            by_size[sizes[r]].append(r)  # type: ignore[index]
    byte_key: dict[Path, str] = {r: f"path:{r}" for r in unique}
    for group in by_size.values():
        if len(group) > 1:
            for r in group:
                byte_key[r] = "bytes:" + _file_digest(r)
    _pair_by(calib, evals, lambda p: byte_key[real[p]], "same bytes", found)

    unreadable: list[Path] = []
    if pixels:
        pixel_key: dict[Path, str] = {}
        decoded: dict[str, str] = {}  # byte key -> pixel digest, so byte-identical files decode once
        for r in unique:
            key = byte_key[r]
            if key not in decoded:
                try:
                    decoded[key] = _pixel_digest(r)
                except HarnessError:
                    decoded[key] = f"unreadable:{r}"
                    unreadable.append(r)
            pixel_key[r] = decoded[key]
        _pair_by(calib, evals, lambda p: pixel_key[real[p]], "same pixels", found)

    pairs = tuple(LeakagePair(c, e, reason) for (c, e), reason in found.items())
    return LeakageReport(pairs=pairs, n_calibration=len(calib), n_evaluation=len(evals),
                         unreadable=tuple(unreadable))


def _pair_by(calib: Sequence[Path], evals: Sequence[Path], key, reason: Reason,
             found: dict[tuple[Path, Path], Reason]) -> None:
    index: dict[str, list[Path]] = defaultdict(list)
    for c in calib:
        index[key(c)].append(c)
    for e in evals:
        k = key(e)
        if k.startswith("unreadable:"):
            continue
        for c in index.get(k, ()):
            found.setdefault((c, e), reason)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _pixel_digest(path: Path) -> str:
    image = read_image(path)
    h = hashlib.blake2b(repr(image.shape).encode(), digest_size=16)
    h.update(image.tobytes())
    return h.hexdigest()
