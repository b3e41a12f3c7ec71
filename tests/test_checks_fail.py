"""Every check driven to fail (issue 13): each input-parity diagnosis on hand-built tensors, and the outputs and
calibration-drift checks of the bundled classifier on planted changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.engine import run_suite
from harness.engine.parity import diagnose
from harness.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "suites" / "assets"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A smooth NCHW image-like tensor (values in [-1, 1]) whose channels differ."""
    y, x = np.mgrid[0:32, 0:32] / 31.0
    chans = [np.sin(3 * x + 1), np.cos(2 * y) * x, (x - y) ** 2]
    return (np.stack(chans)[None] * 0.9).astype(np.float32)


def test_identical_inputs_pass(image: np.ndarray) -> None:
    assert diagnose(image, image.copy(), tolerance=1e-6).diagnosis == ""


@pytest.mark.parametrize(("change", "expected"), [
    (lambda x: x[:, ::-1], "channel order swapped (RGB vs BGR): reversing"),
    (lambda x: x * np.array([0.5, 2.0, 1.0], np.float32)[None, :, None, None] + 0.1, "mean/scale differs"),
    (lambda x: (x * 2.0 + 0.3)[:, ::-1], "channel order swapped (RGB vs BGR) and mean/scale differs"),
    (lambda x: x.transpose(0, 2, 3, 1), "layout differs: the golden input is NHWC"),
    (lambda x: x[:, :, :16, :16], "shape differs"),
    (lambda x: np.ascontiguousarray(x[:, :, :, ::-1]), "resize/crop differs"),
    (lambda x: np.random.default_rng(0).standard_normal(x.shape).astype(np.float32) * 3, "not explained"),
])
def test_each_input_parity_diagnosis(image: np.ndarray, change, expected: str) -> None:  # noqa: ANN001
    golden = np.ascontiguousarray(change(image))
    result = diagnose(image, golden, tolerance=1e-6)
    assert expected in result.diagnosis, result.diagnosis


def _classifier(tmp_path: Path, *, quant_extra: str = "", gates: str = "") -> Path:
    text = (ROOT / "suites" / "classifier_ncnn_int8.toml").read_text()
    text = text.replace('path = "assets/', f'path = "{ASSETS.as_posix()}/')
    text = text.replace('"assets/synthcls', f'"{ASSETS.as_posix()}/synthcls')
    text = text.replace("\n[quant]\n", f"\n[quant]\n{quant_extra}\n").replace("\n[gates]\n", f"\n[gates]\n{gates}\n")
    path = tmp_path / "classifier.toml"
    path.write_text(text)
    return path


def _run(path: Path, tmp_path: Path, items: list[str]):  # noqa: ANN202 - SuiteOutcome
    suite = load_suite(path)
    suite = suite.replace(data=suite.data.replace(max_images=12, calibration_max_images=24))
    return run_suite(suite, items=items, golden_root=tmp_path / "golden")


def test_outputs_check_fails_beyond_its_bound(tmp_path: Path) -> None:
    check = _run(_classifier(tmp_path, gates="output_cosine_min = 0.9999999"), tmp_path, ["outputs"]).checks["outputs"]
    failed = [v for v in check.verdicts if not v.passed]
    assert failed and failed[0].gate == "output_cosine_min" and failed[0].subject == "logits"
    assert "would pass with output_cosine_min" in failed[0].message


def test_calibration_drift_fails_when_the_method_changes(tmp_path: Path) -> None:
    first = _run(_classifier(tmp_path), tmp_path, ["calibration-drift"]).checks["calibration-drift"]
    assert not first.passed  # golden written this run: not confirmed yet
    again = _run(_classifier(tmp_path), tmp_path, ["calibration-drift"]).checks["calibration-drift"]
    assert again.passed
    moved = _run(_classifier(tmp_path, quant_extra='activation_method = "minmax"'), tmp_path,
                 ["calibration-drift"]).checks["calibration-drift"]
    assert not moved.passed
    verdict = next(v for v in moved.verdicts if not v.passed)
    assert verdict.gate == "calibration_drift_max_rel" and verdict.observed > 0.05 and verdict.subject
    assert moved.sections["calibration_drift"][0]["rel_change"] == pytest.approx(verdict.observed)
