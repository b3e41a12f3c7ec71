"""Leakage between calibration and evaluation images: by path, by bytes, by pixels; no false positives."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.leakage import find_leakage


def image(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def save(path: Path, img: np.ndarray, **params: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = [cv2.IMWRITE_JPEG_QUALITY, params["quality"]] if "quality" in params else []
    assert cv2.imwrite(str(path), img, flags)
    return path


@pytest.fixture()
def sets(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    calib = [save(tmp_path / "calib" / f"c{i}.jpg", image(i)) for i in range(6)]
    evals = [save(tmp_path / "eval" / f"e{i}.jpg", image(100 + i)) for i in range(6)]
    return calib, evals


def test_disjoint_sets_have_no_leakage(sets) -> None:
    report = find_leakage(*sets)
    assert report and report.pairs == () and report.as_verdict()
    assert "0 of 6" in report.as_verdict().message


def test_similar_but_different_images_are_not_flagged(tmp_path: Path) -> None:
    base = image(1)
    nudged = base.copy()
    nudged[0, 0, 0] ^= 1  # one pixel, one bit
    a = save(tmp_path / "a.png", base)
    b = save(tmp_path / "b.png", nudged)
    assert a.stat().st_size == b.stat().st_size or True
    assert find_leakage([a], [b]).pairs == ()


def test_same_path_including_through_dotdot_and_symlink(sets, tmp_path: Path) -> None:
    calib, evals = sets
    alias = tmp_path / "eval" / ".." / "calib" / "c2.jpg"
    link = tmp_path / "link.jpg"
    os.symlink(calib[3], link)
    report = find_leakage(calib, [*evals, alias, link])
    assert {(p.calibration.name, p.evaluation.name, p.reason) for p in report.pairs} == {
        ("c2.jpg", "c2.jpg", "same path"), ("c3.jpg", "link.jpg", "same path")}


def test_same_bytes_under_another_name(sets, tmp_path: Path) -> None:
    calib, evals = sets
    copy = tmp_path / "elsewhere" / "renamed.jpeg"
    copy.parent.mkdir()
    copy.write_bytes(calib[1].read_bytes())
    report = find_leakage(calib, [*evals, copy], pixels=False)
    assert [(p.calibration, p.evaluation, p.reason) for p in report.pairs] == [(calib[1], copy, "same bytes")]


def test_same_pixels_reencoded_as_png(sets, tmp_path: Path) -> None:
    calib, evals = sets
    png = save(tmp_path / "eval" / "e_copy.png", cv2.imread(str(calib[4])))  # decoded JPEG, saved losslessly
    assert png.read_bytes() != calib[4].read_bytes()
    report = find_leakage(calib, [*evals, png])
    assert [(p.calibration, p.evaluation, p.reason) for p in report.pairs] == [(calib[4], png, "same pixels")]
    verdict = report.as_verdict()
    assert not verdict and verdict.check == "leakage" and verdict.observed == 1
    first, second = verdict.text.splitlines()
    assert "1 of 7" in first and "drop looks smaller" in first and "e_copy.png" in first
    assert "disjoint" in second
    assert find_leakage(calib, [*evals, png], pixels=False).pairs == ()  # bytes alone cannot see it
    assert report.as_verdict(bound=1)  # a deliberate overlap can be allowed


def test_lossy_reencode_is_documented_as_not_detected(sets, tmp_path: Path) -> None:
    calib, _ = sets
    lossy = save(tmp_path / "lossy.jpg", cv2.imread(str(calib[0])), quality=60)
    assert find_leakage(calib, [lossy]).pairs == ()


def test_unreadable_files_are_reported_not_raised(sets, tmp_path: Path) -> None:
    calib, evals = sets
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    report = find_leakage(calib, [*evals, bad])
    assert report and report.unreadable == (bad.resolve(),)


def test_400_small_images_are_fast(tmp_path: Path) -> None:
    calib = [save(tmp_path / "c" / f"{i}.jpg", image(i, (120, 160))) for i in range(200)]
    evals = [save(tmp_path / "e" / f"{i}.jpg", image(1000 + i, (120, 160))) for i in range(199)]
    evals.append(save(tmp_path / "e" / "dup.png", cv2.imread(str(calib[7]))))
    start = time.perf_counter()
    report = find_leakage(calib, evals)
    elapsed = time.perf_counter() - start
    assert len(report.pairs) == 1
    assert elapsed < 5.0, f"leakage check took {elapsed:.2f} s for 400 images"
