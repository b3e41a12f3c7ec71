"""Regressions on the bundled detector that the harness used to pass or misname (issue 13 items 1, 5, 7).

Each test copies a bundled suite into ``tmp_path/suites`` beside a symlink to ``suites/assets`` (so its relative
paths, and the hashes of its sections, are the bundled file's), applies one defect, and runs it through the
engine against a golden in ``tmp_path``: the bundled golden (copied; it predates the recorded hashes) or one
this test writes first with few images.
"""

from __future__ import annotations

import hashlib
import json

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.engine import run_suite
from harness.engine import task as task_module
from harness.gates import Verdict

REPO = Path(__file__).resolve().parents[1]
DETECTOR = "detector_ncnn_int8"
CONV = "/stage64/stage64.0/stage64.0.0/stage64.0.0.0/Conv"
CLIP_OUT = "/stage64/stage64.0/stage64.0.0/stage64.0.0.2/Clip_output_0"
FEW = "probe_images = 2\nmax_images = 24\ncalibration_max_images = 8"


def copy_suite(root: Path, name: str, edit: Callable[[str], str] = lambda s: s) -> Path:
    suites = root / "suites"
    suites.mkdir(parents=True, exist_ok=True)
    if not (suites / "assets").exists():
        (suites / "assets").symlink_to(REPO / "suites" / "assets", target_is_directory=True)
    path = suites / f"{name}.toml"
    path.write_text(edit((REPO / "suites" / f"{name}.toml").read_text()))
    return path


def bundled_golden(root: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(REPO / "golden" / name, root / "golden" / name)
    return root / "golden"


def legacy_golden(root: Path, name: str) -> Path:
    """A copy of the bundled golden as it was before it recorded weight and section hashes (no ``weights.json``,
    no ``provenance`` in ``metrics.json``, no ``created``): what a golden of an older harness looks like."""
    golden = bundled_golden(root, name)
    folder = golden / name
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("created", None)
    (folder / "weights.json").unlink(missing_ok=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("provenance", None)
    text = json.dumps(metrics, indent=1)
    (folder / "metrics.json").write_text(text)
    files = []
    for f in manifest["files"]:
        if f["name"] == "weights.json":
            continue
        if f["name"] == "metrics.json":
            data = (folder / "metrics.json").read_bytes()
            f = {**f, "nbytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        files.append(f)
    manifest["files"] = files
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return golden


def failed(verdicts: list[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if not v.passed]


def stricter_threshold(text: str) -> str:
    return text.replace('kind = "ssd"', 'kind = "ssd"\nscore_threshold = 0.6', 1)


def few_images(text: str) -> str:
    return text.replace("probe_images = 2", FEW, 1)


# --- item 1: golden metrics are a baseline --------------------------------------------------------
def test_a_stricter_score_threshold_fails_metrics_against_the_golden(tmp_path: Path) -> None:
    """fp32 and int8 mAP both fell (0.816 -> 0.587) and the drop gate, the only metric gate, passed."""
    golden = legacy_golden(tmp_path, DETECTOR)
    outcome = run_suite(copy_suite(tmp_path, DETECTOR, stricter_threshold), items=["metrics"], golden_root=golden)
    result = outcome.checks["metrics"]
    assert all(v.passed for v in result.verdicts if v.check == "metric")  # fp32 - int8 alone sees nothing
    fp32, quantized = failed(result.verdicts)
    moved = re.match(r"metric-golden FAILED: fp32 map moved from golden 0\.8164 to (0\.\d{4}) ", fp32.message)
    assert moved and float(moved.group(1)) < 0.8, fp32.message
    assert quantized.message.startswith("metric-golden FAILED: quantized map moved from golden 0.8116 to ")
    # A golden that predates the section hashes says what it can and cannot tell.
    assert "unchanged model, [preprocess]" in fp32.message
    assert "cannot tell whether [postprocess], [quant], [data], [metrics], evaluation data changed" in fp32.message
    assert "--golden-update" in fp32.message and fp32.source.startswith("default: harness")
    assert outcome.status == "failed" and outcome.entry["metrics"]["golden"]["fp32"]["map"] == pytest.approx(0.8164,
                                                                                                             abs=1e-4)


def test_the_golden_says_what_changed_and_a_per_suite_bound_overrides(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = copy_suite(tmp_path, DETECTOR, few_images)
    golden = tmp_path / "golden"
    first = run_suite(path, items=["metrics"], golden_root=golden).checks["metrics"]
    assert first.verdicts[0].message.startswith("metrics: golden") and "has been written" in first.verdicts[0].message
    assert run_suite(path, items=["metrics"], golden_root=golden).checks["metrics"].passed  # confirmed

    changed = copy_suite(tmp_path, DETECTOR, lambda s: stricter_threshold(few_images(s)))
    fp32 = failed(run_suite(changed, items=["metrics"], golden_root=golden).checks["metrics"].verdicts)[0]
    assert re.search(r"since the golden of \d{4}-\d\d-\d\dT[\d:]+\+00:00: changed \[postprocess\] \(unchanged: model, "
                     r"\[preprocess\], \[quant\], \[data\], \[metrics\], evaluation data\)", fp32.message), fp32.message
    assert fp32.remedy.startswith("[postprocess] changed since the golden")

    # The same regression made in code, not in the suite: nothing the golden records changed.
    nms = task_module.multiclass_nms
    monkeypatch.setattr(task_module, "multiclass_nms", lambda *a, **kw: nms(*a, **{**kw, "score_threshold": 0.6}))
    path = copy_suite(tmp_path, DETECTOR, few_images)
    code = failed(run_suite(path, items=["metrics"], golden_root=golden).checks["metrics"].verdicts)[0]
    assert "nothing it records changed (model, [preprocess]" in code.message and "code did" in code.remedy
    relaxed = copy_suite(tmp_path, DETECTOR, lambda s: few_images(s).replace("[gates]\n", "[gates]\n"
                                                                             "metric_golden_max_abs = 0.9\n", 1))
    verdicts = run_suite(relaxed, items=["metrics"], golden_root=golden).checks["metrics"].verdicts
    gate = next(v for v in verdicts if v.check == "metric-golden")
    assert gate.passed and gate.source.endswith("[gates] metric_golden_max_abs") and gate.observed > 1e-3


# --- item 5: a changed weight is named ------------------------------------------------------------
def scaled_model(path: Path, initializer: str, factor: float) -> Path:
    model = onnx.load(str(REPO / "suites" / "assets" / "ssdlite_shapes.onnx"))
    for t in model.graph.initializer:
        if t.name == initializer:
            t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * factor).astype(np.float32), t.name))
    onnx.save(model, str(path))
    return path


def with_model(model: Path, extra: Callable[[str], str] = lambda s: s) -> Callable[[str], str]:
    return lambda s: extra(s).replace('path = "assets/ssdlite_shapes.onnx"', f'path = "{model.as_posix()}"', 1)


@pytest.fixture(scope="module")
def golden_with_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    run_suite(copy_suite(root, DETECTOR, few_images), items=["fp32-golden"], golden_root=root / "golden")
    assert (root / "golden" / DETECTOR / "weights.json").is_file()
    return root / "golden"


def test_a_scaled_conv_weight_names_the_conv_and_its_initializer(tmp_path: Path, golden_with_weights: Path) -> None:
    model = scaled_model(tmp_path / "scaled.onnx", "stage64.0.0.0.weight", 1.5)
    path = copy_suite(tmp_path, DETECTOR, with_model(model, few_images))
    result = run_suite(path, items=["fp32-golden"], golden_root=golden_with_weights).checks["fp32-golden"]
    weights, layers = failed(result.verdicts)[:2]
    assert weights.message.startswith(f"fp32-golden FAILED: weights changed: 'stage64.0.0.0.weight' of node {CONV} "
                                      "(Conv) (1 of ")
    assert f"first differing tensor '{CLIP_OUT}'" in weights.message
    assert f"in one layer with the changed Conv {CONV}" in weights.message and CONV in weights.remedy
    assert f"whose weights changed at Conv {CONV}" in layers.message and CONV in layers.remedy
    assert "Conv " + CONV + " + BatchNormalization " in layers.message  # the nodes folded and fused into it


def test_a_changed_batchnorm_statistic_names_the_batchnorm(tmp_path: Path, golden_with_weights: Path) -> None:
    """Folding rewrites the Conv's kernel; the hashes are of the model as given, so the BatchNorm is named."""
    model = scaled_model(tmp_path / "bn.onnx", "stage64.0.0.1.running_var", 2.0)
    path = copy_suite(tmp_path, DETECTOR, with_model(model, few_images))
    weights = failed(run_suite(path, items=["fp32-golden"], golden_root=golden_with_weights)
                     .checks["fp32-golden"].verdicts)[0]
    assert ("weights changed: 'stage64.0.0.1.running_var' of node /stage64/stage64.0/stage64.0.0/stage64.0.0.1/"
            "BatchNormalization (BatchNormalization)") in weights.message
    assert f"first differing tensor '{CLIP_OUT}'" in weights.message


def test_a_golden_without_weight_hashes_still_names_the_layer(tmp_path: Path) -> None:
    model = scaled_model(tmp_path / "scaled.onnx", "stage64.0.0.0.weight", 1.5)
    path = copy_suite(tmp_path, DETECTOR, with_model(model))
    golden = legacy_golden(tmp_path, DETECTOR)
    layers = failed(run_suite(path, items=["fp32-golden"], golden_root=golden).checks["fp32-golden"].verdicts)[0]
    assert layers.message.startswith("fp32-golden FAILED: first differing layer /stage64/stage64.0/stage64.0.0/"
                                     f"stage64.0.0.2/Clip (Clip) -> tensor '{CLIP_OUT}' [one layer: Conv {CONV} + ")
    assert "the golden predates weight hashes; rerun with --golden-update to record them" in layers.message


# --- item 7: must-fail suites hide nothing else ---------------------------------------------------
def test_a_must_fail_suite_with_an_extra_failing_check_fails(tmp_path: Path) -> None:
    def extra(text: str) -> str:
        return text.replace("[gates]\n", "[gates]\noutput_cosine_min = 0.99999\n", 1)

    path = copy_suite(tmp_path, "detector_depthwise_per_tensor", extra)
    outcome = run_suite(path, items=["layerwise", "outputs"], golden_root=tmp_path / "golden")
    assert not outcome.checks["layerwise"].passed and not outcome.checks["outputs"].passed
    assert outcome.status == "failed" and not outcome.ok
    verdict = outcome.entry["verdict"]
    assert verdict["message"].startswith("not expected: output FAILED at ")
    assert "expects only layerwise to fail" in verdict["message"] and 'add "output"' in verdict["remedy"]

    declared = copy_suite(tmp_path, "detector_depthwise_per_tensor",
                          lambda s: extra(s).replace('expect_reason = "layerwise"\n',
                                                     'expect_reason = "layerwise"\nexpect_also = ["output"]\n', 1))
    assert run_suite(declared, items=["layerwise", "outputs"], golden_root=tmp_path / "golden").status == "xfailed"


# --- what the golden records ----------------------------------------------------------------------
def test_weight_hashes_cover_constant_nodes_and_name_their_readers() -> None:
    from onnx import TensorProto, helper

    from harness.golden.weights import compare_weights, weight_records, weights_from_json, weights_to_json

    def model(high: float) -> onnx.ModelProto:
        nodes = [helper.make_node("Constant", [], ["hi"], name="bound", value=numpy_helper.from_array(
                     np.array(high, np.float32))),
                 helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                 helper.make_node("Clip", ["c", "", "hi"], ["y"], name="clip")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")])
        return helper.make_model(graph)

    golden = weight_records(model(6.0))
    assert list(golden) == ["w", "hi"] and golden["w"].consumers == (("conv", "Conv"),)
    assert weights_from_json(weights_to_json(golden)) == golden
    assert not compare_weights(golden, weight_records(model(6.0)))
    changes = compare_weights(golden, weight_records(model(5.0)))  # a Clip bound written as a Constant node
    assert changes.describe() == "weights changed: 'hi' of node clip (Clip)" and changes.nodes() == {"clip"}


def test_section_hashes_do_not_depend_on_where_the_checkout_or_the_data_is(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.engine.baseline import section_hashes
    from harness.suite import load_suite

    for place in ("one", "two/deeper"):
        shutil.copytree(REPO / "suites" / "assets" / "synthvoc" / "VOCdevkit" / "VOC2007",
                        tmp_path / place / "data" / "VOC2007", symlinks=True,
                        ignore=shutil.ignore_patterns("JPEGImages", "Annotations"))

    def hashes(checkout: str, data: str, edit: Callable[[str], str] = lambda s: s) -> dict[str, str]:
        monkeypatch.setenv("QH_TEST_DATA", str(tmp_path / data / "data"))
        text = edit((REPO / "suites" / f"{DETECTOR}.toml").read_text()).replace(
            'root = "assets/synthvoc/VOCdevkit/VOC2007"', 'root = "${QH_TEST_DATA}/VOC2007"')
        path = tmp_path / checkout / "suites" / "x.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace('path = "assets/', f'path = "{(REPO / "suites" / "assets").as_posix()}/'))
        return section_hashes(load_suite(path))

    here = hashes("a", "one")
    assert hashes("b/c/d", "two/deeper") == here
    moved = hashes("a", "one", stricter_threshold)
    assert [s for s in here if here[s] != moved[s]] == ["postprocess"]
