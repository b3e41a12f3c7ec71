"""The ``finite`` check and the golden's NaN refusal, on the bundled detector with NaN planted (issue 13, item 2).

The planted model is the bundled SSD-lite detector with the class-score bias of 4 of the 8 priors of its first
head set to NaN: 43% of ``scores`` are NaN, in fp32 and in every quantized run. Before the check existed, that
model passed every check under nnie-int8 (mAP 0.763 fp32 and int8: the NaN priors fall below the score
threshold) and its golden was written with the NaN in it.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.engine import run_suite
from harness.engine.finite import NonfiniteCounter, finite
from harness.errors import ConfigError, DataError, NumericError
from harness.golden import GoldenStore
from harness.model.graph import TensorInfo
from harness.suite import load_suite

ASSETS = Path(__file__).resolve().parents[1] / "suites" / "assets"
FIRST_NAN = "/conf.0/conf.0.1/Conv"  # the conv whose bias is NaN; fused-away tensors are not compared
PRIORS_PER_CELL, CLASSES = 8, 7


def planted_detector(tmp_path: Path, bias: str, channels: list[int], *, suite_extra: str = "") -> Path:
    """A copy of the bundled detector with ``bias[channels] = NaN`` and a nnie-int8 suite for it in tmp_path."""
    model = onnx.load(str(ASSETS / "ssdlite_shapes.onnx"))
    init = next(i for i in model.graph.initializer if i.name == bias)
    values = numpy_helper.to_array(init).copy()
    values[channels] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, bias))
    onnx.save(model, str(tmp_path / "planted.onnx"))
    text = (Path(__file__).resolve().parents[1] / "suites" / "detector_nnie_int8.toml").read_text()
    text = re.sub(r"golden_from = .*\n", suite_extra + "\n", text)
    text = text.replace('path = "assets/ssdlite_shapes.onnx"', 'path = "../planted.onnx"')
    text = text.replace('root = "assets/', f'root = "{ASSETS.as_posix()}/')
    text = text.replace('name = "detector_nnie_int8"', 'name = "planted"')
    (tmp_path / "suites").mkdir(exist_ok=True)
    path = tmp_path / "suites" / "planted.toml"
    path.write_text(text)
    return path


def small(path: Path):  # noqa: ANN201 - a Suite
    suite = load_suite(path)
    return suite.replace(data=suite.data.replace(max_images=6, calibration_max_images=8))


@pytest.fixture
def nan_scores(tmp_path: Path) -> Path:
    return planted_detector(tmp_path, "conf.0.1.bias", [p * CLASSES for p in range(PRIORS_PER_CELL // 2)])


def test_nan_scores_fail_the_finite_check_naming_the_first_layer_and_image(tmp_path: Path, nan_scores: Path) -> None:
    outcome = run_suite(small(nan_scores), golden_root=tmp_path / "golden")
    checks = outcome.checks
    # The comparisons of outputs and metrics skip the NaN pairs; the layerwise bounds count them as a failure,
    # and name the same first tensor.
    assert checks["outputs"].passed
    # metrics now reads the golden (its metrics are a baseline), and the golden refuses the NaN
    assert checks["metrics"].error is not None and "Refused to write the golden" in str(checks["metrics"].error)
    assert not checks["layerwise"].passed
    assert checks["layerwise"].sections["first_divergent"]["reason"] == "nonfinite"
    verdict = checks["finite"].verdicts[0]
    assert not verdict.passed and verdict.check == "finite" and verdict.subject == f"{FIRST_NAN}_output_0"
    # 4 NaN channels x 20 x 20 cells of 56 x 400 values, on each of the 2 probe images
    assert (f"first fp32 layer {FIRST_NAN} (Conv) -> tensor '{FIRST_NAN}_output_0' holds 3200 NaN and 0 Inf of "
            "44800 values over 2 probe images (first on probe image '300000' at [0, 0, 0, 0])") in verdict.message
    assert "1 tensor on 6 of 6 evaluation images" in verdict.message  # the outputs, counted while evaluating
    assert "quantization is not the cause" in verdict.remedy and "allow_nonfinite = true" in verdict.remedy
    assert verdict.observed > 0 and verdict.details["n_tensors"] == len(outcome.entry["nonfinite"])
    scores = next(r for r in outcome.entry["nonfinite"] if r["tensor"] == "scores" and r["image_set"] == "evaluation"
                  and r["side"] == "quantized")
    assert scores["nan"] == 6 * 1600 * CLASSES and scores["images_bad"] == 6
    assert not outcome.ok


def test_a_golden_with_nan_is_refused_and_nothing_is_written(tmp_path: Path, nan_scores: Path) -> None:
    outcome = run_suite(small(nan_scores), items=["input-parity"], golden_root=tmp_path / "golden")
    error = outcome.checks["input-parity"].error
    assert isinstance(error, NumericError)
    assert (f"layer tensor '{FIRST_NAN}_output_0' holds 3200 NaN/Inf values of 44800 (3200 NaN, 0 Inf; the first "
            "at [0, 0, 0, 0], probe image '300000'); nothing was written") in str(error)
    assert "[suite] allow_nonfinite = true" in error.remedy
    assert not (tmp_path / "golden" / "planted").exists()
    assert [p.name for p in (tmp_path / "golden").iterdir()] == [".planted.lock"]  # no temp dir left either


def test_allow_nonfinite_reports_without_failing_and_keeps_nan_in_the_golden(tmp_path: Path) -> None:
    path = planted_detector(tmp_path, "conf.0.1.bias", [0], suite_extra="allow_nonfinite = true")
    suite = small(path)
    assert suite.allow_nonfinite and suite.to_dict()["suite"]["allow_nonfinite"] is True
    outcome = run_suite(suite, items=["input-parity", "finite"], golden_root=tmp_path / "golden")
    verdict = outcome.checks["finite"].verdicts[0]
    assert verdict.passed and verdict.message.startswith("finite passed with a note ([suite] allow_nonfinite = true)")
    assert FIRST_NAN in verdict.message and verdict.source == "planted.toml [suite] allow_nonfinite = true"
    layer = GoldenStore.open(tmp_path / "golden" / "planted").read_tensor(f"{FIRST_NAN}_output_0", section="layers")
    assert np.isnan(layer).sum() == 2 * 400  # one channel, 20 x 20, on two probe images


def test_nan_boxes_name_the_model_output_not_the_decoded_boxes(tmp_path: Path) -> None:
    """NaN box regressions used to stop the evaluation with "det_boxes has shape (123, 4) or non-finite values"."""
    path = planted_detector(tmp_path, "loc.0.1.bias", [0])
    outcome = run_suite(small(path), items=["finite", "metrics"], golden_root=tmp_path / "golden")
    error = outcome.checks["metrics"].error
    assert isinstance(error, NumericError) and isinstance(error.__cause__, DataError)
    assert "The fp32 output 'boxes' holds" in str(error) and "on evaluation image '300000'" in str(error)
    verdict = outcome.checks["finite"].verdicts[0]
    assert not verdict.passed and "first fp32 layer /loc.0/loc.0.1/Conv (Conv)" in verdict.message
    assert "the rest was not scanned: The fp32 output 'boxes'" in verdict.message


# --- the counter and the check, without a model ----------------------------------------------------------
def test_counter_counts_per_image_and_merges_like_one_pass() -> None:
    a = np.zeros((1, 3, 2)); a[0, 1, 1] = np.nan
    b = np.ones((1, 3, 2)); b[0, 2, 0] = np.inf; b[0, 0, 0] = np.nan
    whole = NonfiniteCounter().update("fp32", "probe", "i0", {"t": a}).update("fp32", "probe", "i1", {"t": b})
    halves = NonfiniteCounter().update("fp32", "probe", "i0", {"t": a}).merge(
        NonfiniteCounter().update("fp32", "probe", "i1", {"t": b}))
    for counter in (whole, halves):
        (row,) = counter.bad_rows({})
        assert (row.nan, row.inf, row.elements, row.images, row.images_bad) == (2, 1, 12, 2, 2)
        assert (row.first_image, row.first_coords) == ("i0", (0, 1, 1))
        assert counter.totals() == "NaN/Inf in fp32 1 tensor on 2 of 2 probe images"
    ints = NonfiniteCounter().update("fp32", "probe", "i0", {"idx": np.arange(4)})
    assert ints.bad_rows({}) == [] and ints.rows_[("fp32", "probe", "idx")].elements == 4


def test_order_is_fp32_first_then_topological_then_probe_before_evaluation() -> None:
    nan = np.full((1, 2), np.nan)
    c = NonfiniteCounter()
    c.update("quantized", "probe", "p0", {"early": nan})
    c.update("fp32", "evaluation", "e5", {"early": nan})
    c.update("fp32", "probe", "p0", {"late": nan})
    order = {"early": 0, "late": 1}
    assert [(r.side, r.image_set, r.tensor) for r in c.bad_rows(order)] == [
        ("fp32", "evaluation", "early"), ("fp32", "probe", "late"), ("quantized", "probe", "early")]


def _stub_stages(*, eval_nan: bool, allow: bool = False) -> SimpleNamespace:
    """Just what ``finite`` reads: two probe images, finite everywhere; NaN in the quantized output of the
    third evaluation image when ``eval_nan``."""
    layers = [TensorInfo(0, "conv_out", "conv", "Conv", 1, (1, 2)), TensorInfo(1, "logits", "fc", "Gemm", 1, (1, 2))]
    ok = [np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)]
    evaluation = NonfiniteCounter()
    for i in range(4):
        quantized = np.full((1, 2), np.nan if eval_nan and i == 2 else 0.5, np.float32)
        evaluation.update("fp32", "evaluation", f"e{i}", {"logits": ok[0]})
        evaluation.update("quantized", "evaluation", f"e{i}", {"logits": quantized})
    probes = [SimpleNamespace(image_id="p0"), SimpleNamespace(image_id="p1")]
    return SimpleNamespace(
        probe=SimpleNamespace(layers={"conv_out": ok, "logits": ok}, outputs={"logits": ok}),
        quant_probe=SimpleNamespace(nonfinite=NonfiniteCounter(), kernel_outputs={"logits": ok}),
        data=SimpleNamespace(probes=probes, evaluation=[None] * 4), task=object(), layers=layers,
        evaluation=SimpleNamespace(nonfinite=evaluation),
        suite=SimpleNamespace(allow_nonfinite=allow, path=Path("stub.toml")))


def test_nan_only_on_an_evaluation_image_is_found_and_named() -> None:
    clean = finite(_stub_stages(eval_nan=False)).verdicts[0]
    assert clean.passed and clean.message == ("finite passed: no NaN/Inf in the fp32 or quantized tensors on 2 probe "
                                              "images and the outputs on 4 evaluation images")
    verdict = finite(_stub_stages(eval_nan=True)).verdicts[0]
    assert not verdict.passed and verdict.subject == "logits"
    assert ("first quantized output fc (Gemm) -> tensor 'logits' holds 2 NaN and 0 Inf of 8 values over 4 "
            "evaluation images (first on evaluation image 'e2' at [0, 0])") in verdict.message
    assert "float_layers = [\"fc\"]" in verdict.remedy
    allowed = finite(_stub_stages(eval_nan=True, allow=True)).verdicts[0]
    assert allowed.passed and "'e2'" in allowed.message


def test_allow_nonfinite_must_be_a_boolean(tmp_path: Path) -> None:
    path = planted_detector(tmp_path, "conf.0.1.bias", [0], suite_extra='allow_nonfinite = "yes"')
    with pytest.raises(ConfigError, match=r"allow_nonfinite.*a boolean"):
        load_suite(path)
    assert not load_suite(planted_detector(tmp_path, "conf.0.1.bias", [0])).allow_nonfinite
