"""The suite plugin end to end, with pytester, on a tiny model and images built here.

The model (``model_factory.depthwise_model``) has a depthwise layer whose channels need per-channel weight
scales, and 16-bit min/max activations, so every quantisation effect in these tests comes from the weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from harness.cli import main as cli_main
from harness.golden import GoldenStore
from model_factory import depthwise_model

SUITE = """[suite]
name = "{name}"
task = "layers"
{suite_extra}
[model]
path = "../model.onnx"

[preprocess]
size = [16, 16]
channel_order = "{order}"
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]

[data]
format = "images"
root = "../eval"
calibration = "../{calibration}"
probe_images = 2

[quant]
profile = "ncnn-int8"
activation_bits = 16
activation_method = "minmax"
{quant_extra}
[gates]
layer_cosine_min = 0.99
"""


def write_suite(root: Path, *, name: str = "tiny", order: str = "rgb", calibration: str = "calib",
                quant_extra: str = "", suite_extra: str = "") -> Path:
    path = root / "suites" / f"{name}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SUITE.format(name=name, order=order, calibration=calibration, quant_extra=quant_extra,
                                 suite_extra=suite_extra))
    return path


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    root = pytester.path
    onnx.save(depthwise_model(), str(root / "model.onnx"))
    for folder, seed0, n in (("eval", 0, 4), ("calib", 100, 6)):
        (root / folder).mkdir()
        for i in range(n):
            rng = np.random.default_rng(seed0 + i)
            base = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (24, 24), interpolation=cv2.INTER_CUBIC)
            image = np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / folder / f"img_{i}.png"), image)
    write_suite(root)
    return root


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "suites", *args)


def results(root: Path) -> dict:
    return json.loads((root / "reports" / "results.json").read_text())


def confirmed(pytester: pytest.Pytester) -> None:
    """Write the golden and confirm it (the first run fails by design)."""
    run(pytester).assert_outcomes(failed=3, passed=4)
    run(pytester).assert_outcomes(passed=7)


def test_golden_life_cycle(pytester: pytest.Pytester, project: Path) -> None:
    first = run(pytester)
    first.assert_outcomes(failed=3, passed=4)
    first.stdout.fnmatch_lines(["*input-parity: golden golden/tiny was missing and has been written*",
                                "remedy: run again to confirm, then commit golden/tiny"])
    assert results(project)["suites"][0]["golden"]["state"] == "written"
    store = GoldenStore.open(project / "golden" / "tiny", verify="eager")
    assert store.names("input") == ["input"] and "dw_out" in store.names("layers")

    run(pytester).assert_outcomes(passed=7)
    second = results(project)
    assert second["passed"] and second["suites"][0]["status"] == "passed"
    assert second["previous"] is not None and second["suites"][0]["golden"]["state"] == "verified"

    update = run(pytester, "--golden-update")
    update.assert_outcomes(failed=3, passed=4)
    update.stdout.fnmatch_lines(["*has been rewritten (--golden-update)*"])
    assert results(project)["suites"][0]["golden"]["state"] == "updated"
    run(pytester).assert_outcomes(passed=7)  # the rewritten golden is confirmed by the next run


def test_truncated_or_edited_golden_is_an_error_and_is_kept(pytester: pytest.Pytester, project: Path) -> None:
    confirmed(pytester)
    layers = project / "golden" / "tiny" / "layers.dat"
    cut = layers.read_bytes()[:-10]
    layers.write_bytes(cut)
    result = run(pytester)
    result.assert_outcomes(failed=3, passed=4)
    result.stdout.fnmatch_lines(["*fp32-golden could not run: Golden file *layers.dat has * bytes, the manifest says*"])
    assert layers.read_bytes() == cut  # nothing overwritten

    layers.write_bytes(cut + b"\0" * 10)
    result = run(pytester)
    result.assert_outcomes(failed=3, passed=4)  # a small golden is verified whole when opened
    result.stdout.fnmatch_lines(["*could not run: Tensor 'flat' in golden file *layers.dat does not match its sha256*"])
    assert layers.read_bytes() == cut + b"\0" * 10


def test_scaled_weights_fail_fp32_golden_naming_the_layer(pytester: pytest.Pytester, project: Path) -> None:
    confirmed(pytester)
    onnx.save(depthwise_model(dw_scale=1.5), str(project / "model.onnx"))
    result = run(pytester, "-k", "fp32-golden")
    result.assert_outcomes(failed=1)
    section = _failure_section(result.stdout.str(), "tiny::fp32-golden")
    # The cause first (the weight and the node reading it), then where it shows.
    assert section[0].startswith("fp32-golden FAILED: weights changed: 'dw_w' of node dw (Conv) (1 of ")
    assert "first differing tensor 'dw_out' of dw (Conv), the node whose weights changed" in section[0]
    layers = next(line for line in section if "first differing layer" in line)
    assert "first differing layer dw (Conv) -> tensor 'dw_out', whose weights changed at Conv dw" in layers
    assert "the model file changed since the golden was written" in layers


def test_per_tensor_depthwise_fails_layerwise_naming_it(pytester: pytest.Pytester, project: Path) -> None:
    confirmed(pytester)
    write_suite(project, quant_extra='depthwise_weight_granularity = "per_tensor"')
    result = run(pytester, "-k", "layerwise")
    result.assert_outcomes(failed=1)
    section = _failure_section(result.stdout.str(), "tiny::layerwise")
    assert section[0].startswith("layerwise FAILED") and "first divergent layer: dw (Conv)" in section[0]
    assert section[1].startswith("remedy: ncnn: comment out") and '[quant] float_layers = ["dw"]' in section[1]
    rows = section[3:]
    assert 1 <= len(rows) <= 20 and rows[0].split()[0] in {"pool_out", "flat", "logits", "dw_out"}


def _failure_section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line and line.startswith("_"))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^(_{3,}|={3,})", lines[i])), len(lines))
    return [line for line in lines[start + 1: end] if line.strip()]


def test_swapped_channel_order_is_diagnosed(pytester: pytest.Pytester, project: Path) -> None:
    confirmed(pytester)
    write_suite(project, order="bgr")
    result = run(pytester, "-k", "input-parity")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*input-parity FAILED*diagnosis: channel order swapped (RGB vs BGR)*"])


def test_overlapping_calibration_and_evaluation_fail_leakage(pytester: pytest.Pytester, project: Path) -> None:
    write_suite(project, calibration="eval")
    result = run(pytester, "-k", "leakage")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*leakage FAILED: 4 of 4 evaluation images are also calibration images*"])


def test_strict_expected_failure(pytester: pytest.Pytester, project: Path) -> None:
    confirmed(pytester)
    expect = 'expect = "fail"\nexpect_reason = "layerwise"'
    write_suite(project, suite_extra=expect, quant_extra='depthwise_weight_granularity = "per_tensor"')
    result = run(pytester)
    result.assert_outcomes(passed=6, xfailed=1)  # layerwise, the expected failure
    assert result.ret == 0 and results(project)["suites"][0]["status"] == "xfailed"

    write_suite(project, suite_extra=expect)  # the defect is gone: the suite must fail
    result = run(pytester)
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*expected layerwise to fail (strict), but it passed*"])
    assert results(project)["suites"][0]["status"] == "xpassed" and not results(project)["passed"]


def test_must_fail_suite_with_an_undeclared_failure_fails(pytester: pytest.Pytester, project: Path) -> None:
    """Issue 13 item 7: a second failing check used to be an xfail "consequence of the expected failure"."""
    confirmed(pytester)
    expect = 'expect = "fail"\nexpect_reason = "layerwise"'
    path = write_suite(project, suite_extra=expect, quant_extra='depthwise_weight_granularity = "per_tensor"')
    path.write_text(path.read_text() + "output_euclid_min = 1.0\n")  # [gates]: outputs fails too
    result = run(pytester)
    result.assert_outcomes(passed=5, xfailed=1, failed=1)  # 8 items, finite among them
    result.stdout.fnmatch_lines(["*output FAILED at logits*(not expected: must-fail suite tiny expects only "
                                 "layerwise to fail)*", '*add "output" to [[]suite] expect_also*'])
    suite = results(project)["suites"][0]
    assert suite["status"] == "failed" and suite["verdict"]["message"].startswith("not expected: output FAILED")

    declared = expect + '\nexpect_also = ["output"]'
    path = write_suite(project, suite_extra=declared, quant_extra='depthwise_weight_granularity = "per_tensor"')
    path.write_text(path.read_text() + "output_euclid_min = 1.0\n")
    result = run(pytester)
    result.assert_outcomes(passed=5, xfailed=2)
    result.stdout.no_fnmatch_line("*not expected*")
    assert results(project)["suites"][0]["status"] == "xfailed"


def test_suite_selection_and_quant_suite_fixture(pytester: pytest.Pytester, project: Path) -> None:
    write_suite(project, name="other")
    confirmed_run = pytester.runpytest("-p", "no:cacheprovider", "suites", "--suite", "tiny")
    confirmed_run.assert_outcomes(failed=3, passed=4)  # only tiny's seven items
    pytester.makepyfile(test_user="""
        def test_user(quant_suite):
            outcome = quant_suite("suites/tiny.toml", items=["layerwise", "outputs"])
            assert outcome.checks["layerwise"].passed
            assert outcome.entry["layers"][0]["name"] == "relu1_out"
            assert outcome.entry["first_divergent"] is None
    """)
    pytester.runpytest("-p", "no:cacheprovider", "test_user.py").assert_outcomes(passed=1)


def test_xdist_two_workers_keep_goldens_and_results_whole(pytester: pytest.Pytester, project: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    # The subprocess starts in the throw-away project: make it import this checkout's harness, not whichever
    # checkout the package was installed (editable) from.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    write_suite(project, name="other")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "suites")
    result.assert_outcomes(failed=6, passed=8)
    for name in ("tiny", "other"):
        GoldenStore.open(project / "golden" / name, verify="eager")
    assert sorted(s["name"] for s in results(project)["suites"]) == ["other", "tiny"]
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "suites").assert_outcomes(passed=14)


def test_cli_run_exit_codes_and_summary(project: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(project)
    assert cli_main(["run", "--quiet"]) == 1  # golden written: not confirmed yet
    assert cli_main(["run", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^tiny\s+ncnn-int8\s+-\s+", out, re.M) and "PASSED" in out
    assert (project / "reports" / "results.json").is_file()
    assert cli_main(["run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["suite"] == "tiny" and rows[0]["status"] == "passed"


def test_sampled_layer_dumps_still_name_the_changed_layer(pytester: pytest.Pytester, project: Path) -> None:
    """``probe_layer_elements`` keeps a fixed sample of each layer (the golden budget for large models); the
    fp32-golden check samples the live tensors at the same positions, so a changed layer is still found."""
    suite = project / "suites" / "tiny.toml"
    suite.write_text(suite.read_text().replace("probe_images = 2", "probe_images = 2\nprobe_layer_elements = 5"))
    confirmed(pytester)
    store = GoldenStore.open(project / "golden" / "tiny")
    assert store.manifest.extra["layer_sample_limit"] == 5
    assert store.entry("dw_out", section="layers").shape == (2, 5)
    onnx.save(depthwise_model(dw_scale=1.5), str(project / "model.onnx"))
    result = run(pytester, "-k", "fp32-golden")
    result.assert_outcomes(failed=1)
    section = _failure_section(result.stdout.str(), "tiny::fp32-golden")
    assert section[0].startswith("fp32-golden FAILED: weights changed: 'dw_w' of node dw (Conv)")
    assert any("first differing layer dw (Conv) -> tensor 'dw_out'" in line for line in section)


def test_suite_behind_an_unset_variable_is_skipped_and_listed(pytester: pytest.Pytester, project: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Real-model suites name their files through ``${QUANT_HARNESS_REALMODELS}``: unset, the suite is skipped
    with the variable named (pytest and `quant-harness run`, and results.json lists it); set, it runs."""
    suite = project / "suites" / "tiny.toml"
    suite.write_text(suite.read_text().replace('path = "../model.onnx"', 'path = "${QH_TEST_MODELS}/model.onnx"'))
    monkeypatch.delenv("QH_TEST_MODELS", raising=False)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*Suite 'tiny' (tiny.toml) needs the environment variable QH_TEST_MODELS*"])

    monkeypatch.chdir(project)
    assert cli_main(["run", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "skipped suites/tiny.toml: Suite 'tiny'" in out and "0/0 suites as expected (1 skipped)" in out
    listed = results(project)["skipped"]
    assert listed == [{"suite_file": "suites/tiny.toml", "reason": listed[0]["reason"]}]
    assert "QH_TEST_MODELS" in listed[0]["reason"]
    assert "1 suite(s) skipped" in (project / "reports" / "index.html").read_text()

    monkeypatch.setenv("QH_TEST_MODELS", str(project))
    run(pytester).assert_outcomes(failed=3, passed=4)  # runs: the first run writes the golden


def test_reference_model_check_names_the_first_layer_that_differs(pytester: pytest.Pytester, project: Path) -> None:
    """``[model] reference`` adds the ``reference`` item: the model against another export of it, layer by layer
    on the tensors both have (name and shape)."""
    onnx.save(depthwise_model(), str(project / "twin.onnx"))
    suite = project / "suites" / "tiny.toml"
    suite.write_text(suite.read_text().replace('path = "../model.onnx"', 'path = "../model.onnx"\nreference = "../twin.onnx"'))
    passed = run(pytester, "-k", "reference")
    passed.assert_outcomes(passed=1)
    shared = results(project)["suites"][0]["reference"]
    assert shared["shared_layers"] >= 3 and all(r["max_abs"] == 0.0 for r in shared["tensors"])

    onnx.save(depthwise_model(dw_scale=1.5), str(project / "twin.onnx"))
    failed = run(pytester, "-k", "reference")
    failed.assert_outcomes(failed=1)
    section = _failure_section(failed.stdout.str(), "tiny::reference")
    assert section[0].startswith("reference FAILED: first layer that differs from twin.onnx: dw (Conv) -> tensor 'dw_out'")
