"""A crash in one suite is that suite's error, and onnxruntime failing on a model the harness built says so.

Suites are the tiny ones of ``test_plugin`` (same helpers); the crash is a RuntimeError planted in one suite's
calibration stage, or in building its results entry, while another suite runs normally.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import harness.engine
from harness.cli import main as cli_main
from harness.engine.stages import SuiteStages
from harness.errors import ModelRuntimeError
from harness.model.session import BuiltModel, make_session
from harness.quant import ALL_CONSUMERS, QuantPlan, TensorQuant
from harness.quant.scheme import QuantScheme, quant_params
from harness.quant.simulate import mode_session, write_qdq_model
from test_plugin import project, results, write_suite  # noqa: F401 - project is a fixture

_QUANTIZED = SuiteStages.__dict__["quantized"]


def _plant_crash(monkeypatch: pytest.MonkeyPatch, suite_name: str) -> None:
    """Suite ``suite_name`` raises RuntimeError("boom ...") when its QDQ model is built; others run as usual."""
    def quantized(self: SuiteStages):
        if self.suite.name == suite_name:
            raise RuntimeError(f"boom in {suite_name}")
        return _QUANTIZED.__get__(self, SuiteStages)

    monkeypatch.setattr(SuiteStages, "quantized", property(quantized))


def _by_name(root: Path) -> dict[str, dict]:
    return {s["name"]: s for s in results(root)["suites"]}


def test_cli_run_reports_the_other_suites_when_one_crashes(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_suite(project, name="bad")
    monkeypatch.chdir(project)
    assert cli_main(["run", "--quiet"]) == 1  # goldens written: not confirmed yet
    _plant_crash(monkeypatch, "bad")
    (project / "reports" / "results.json").unlink()
    (project / "reports" / "index.html").unlink()
    assert cli_main(["run", "--quiet"]) == 1
    out = capsys.readouterr().out
    suites = _by_name(project)
    assert suites["tiny"]["status"] == "passed"
    bad = suites["bad"]
    assert bad["status"] == "error" and not bad["outcome_ok"]
    crashed = [c for c in bad["checks"] if c["error"]]
    # every check that needs the QDQ model crashed; the fp32 ones ran and passed
    assert {"layerwise", "outputs", "calibration-drift"} <= {c["item"] for c in crashed}
    assert {"leakage", "input-parity", "fp32-golden"} <= {c["item"] for c in bad["checks"] if c["passed"]}
    assert all(c["passed"] or "boom in bad" in c["error"]["message"] for c in bad["checks"])
    error = crashed[0]["error"]
    assert error["type"] == "RuntimeError" and "boom in bad" in error["message"]
    assert "in quantized" in error["traceback"] and error["traceback"].rstrip().endswith("RuntimeError: boom in bad")
    assert "defect of the harness" in error["remedy"]
    first = crashed[0]["item"]  # the first check in run order that needs the QDQ model
    assert f"{first} could not run: unexpected RuntimeError: boom in bad" in bad["verdict"]["message"]
    assert (project / "reports" / "index.html").is_file()
    assert f"bad: {first} could not run: unexpected RuntimeError: boom in bad" in out


def test_cli_run_survives_a_crash_outside_the_checks(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_suite(project, name="bad")
    monkeypatch.chdir(project)
    real = harness.engine.suite_entry

    def suite_entry(suite, payloads, previous=None):
        if suite.name == "bad":
            raise KeyError("no such section")
        return real(suite, payloads, previous)

    monkeypatch.setattr(harness.engine, "suite_entry", suite_entry)
    assert cli_main(["run", "--quiet"]) == 1
    suites = _by_name(project)
    assert suites["tiny"]["status"] == "failed"  # first run: golden written, not confirmed
    assert suites["bad"]["status"] == "error"
    [check] = suites["bad"]["checks"]
    assert check["item"] == "run" and check["error"]["type"] == "KeyError"


def test_pytest_plugin_fails_only_the_crashing_items_and_writes_results(pytester: pytest.Pytester, project: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_suite(project, name="bad")
    pytester.runpytest("-p", "no:cacheprovider", "suites")  # write both goldens
    _plant_crash(monkeypatch, "bad")
    result = pytester.runpytest("-p", "no:cacheprovider", "suites")
    text = result.stdout.str()
    assert "layerwise crashed: unexpected RuntimeError: boom in bad" in text
    assert "remedy: this is a defect of the harness" in text
    suites = _by_name(project)
    assert suites["tiny"]["status"] == "passed" and suites["bad"]["status"] == "error"
    crashed = sum(1 for c in suites["bad"]["checks"] if c["error"])
    total = len(suites["tiny"]["checks"]) + len(suites["bad"]["checks"])
    assert crashed >= 3
    result.assert_outcomes(passed=total - crashed, failed=crashed)  # every item reported, only crashes fail


# --- errors about models the harness built ------------------------------------------------------
def _resize_model() -> onnx.ModelProto:
    """x [1,2,4,4] -> Resize(scales = Identity([1, 1, 2, 2])) -> Add(tile of x): the scales must stay exact."""
    nodes = [helper.make_node("Identity", ["scales_c"], ["scales"], name="scales_id"),
             helper.make_node("Resize", ["x", "", "scales"], ["up"], name="up", mode="nearest"),
             helper.make_node("Tile", ["x", "reps"], ["tiled"], name="tile"),
             helper.make_node("Add", ["tiled", "up"], ["out"], name="add")]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales_c"),
                               numpy_helper.from_array(np.array([1, 1, 2, 2], np.int64), "reps")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_onnxruntime_failing_on_the_qdq_model_names_the_harness_built_model() -> None:
    """The RetinaFace failure: Q/DQ on a Resize's scales ([1, 1, 2, 2] -> [1, 1, 1.0015...]) stops the
    upsampling, and the Add after it fails. The error names the harness's model, its profile and the node."""
    scheme = QuantScheme()  # symmetric int8 with the KL threshold that clipped 2 to 1.0015
    scale, zp = quant_params(scheme, -1.0015, 1.0015)
    plan = QuantPlan(activations={("scales", ALL_CONSUMERS): TensorQuant(scheme, scale, zp)})
    qdq = write_qdq_model(onnx.shape_inference.infer_shapes(_resize_model()), plan)
    source = BuiltModel(what="the int8 simulation (QDQ) model", origin="models/retina.onnx", profile="bm1684-int8",
                        inspect="quant-harness calibrate models/retina.onnx --profile bm1684-int8 --qdq-out qdq.onnx")
    session = mode_session(qdq, "simulate", threads=1, source=source)
    with pytest.raises(ModelRuntimeError) as info:
        session.run(None, {"x": np.ones((1, 2, 4, 4), np.float32)})
    message = str(info.value)
    assert message.startswith("onnxruntime failed running the int8 simulation (QDQ) model that the harness built "
                              "from models/retina.onnx for profile 'bm1684-int8' (simulate mode) at node 'add' "
                              "(Add reading 'tiled', 'up')")
    assert "not the model you gave" in message and "report it" in message
    assert "--qdq-out qdq.onnx" in message and "check the preprocessing" not in message


def test_a_user_model_that_fails_is_still_the_users_model() -> None:
    with pytest.raises(ModelRuntimeError) as info:
        make_session(b"not a model", threads=1, source="models/mine.onnx")
    assert str(info.value).startswith("onnxruntime could not load models/mine.onnx:")
    assert "the harness built" not in str(info.value)
    with pytest.raises(ModelRuntimeError) as built:
        make_session(b"not a model", threads=1, source=BuiltModel(what="the int8 simulation (QDQ) model",
                                                                   profile="ncnn-int8"))
    assert str(built.value).startswith("onnxruntime could not load the int8 simulation (QDQ) model that the harness "
                                       "built for profile 'ncnn-int8':")


def test_a_suite_whose_qdq_model_onnxruntime_refuses_is_an_error_naming_it(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The QDQ model the stages build is broken (an op onnxruntime does not have): the checks on it are errors
    that name the harness's model for the suite's profile; the fp32 checks still pass."""
    import harness.engine.stages as stages

    real = stages.write_qdq

    def broken(folded, plan):
        qdq = real(folded, plan)
        # the op that writes the graph output: the simulation prunes nodes nothing reads, so it must be needed
        last = qdq.proto.graph.node[-1]
        last.op_type, last.domain = "NoSuchOp", "nowhere"
        qdq.proto.opset_import.append(helper.make_opsetid("nowhere", 1))
        return qdq

    monkeypatch.setattr(stages, "write_qdq", broken)
    monkeypatch.chdir(project)
    assert cli_main(["run", "--quiet"]) == 1
    tiny = _by_name(project)["tiny"]
    assert tiny["status"] == "error"
    errors = {c["item"]: c["error"] for c in tiny["checks"] if c["error"]}
    assert {"layerwise", "outputs"} <= set(errors)
    assert not {"leakage", "input-parity", "fp32-golden"} & set(errors)
    assert {e["type"] for e in errors.values()} == {"ModelRuntimeError"}
    assert ("onnxruntime could not load the int8 simulation (QDQ) model that the harness built from "
            f"{project / 'model.onnx'} for profile 'ncnn-int8' (simulate mode)") in errors["layerwise"]["message"]
    assert "quant-harness calibrate" in errors["layerwise"]["message"]
    assert json.dumps(errors).count("check the op set") == 0
