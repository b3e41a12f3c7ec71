"""Every layer name a user gives is checked against the model (issue 13, item 6).

Before: ``float_layers = ["no_such_layer"]`` (suite or ``calibrate --set``), a tensor name in float_layers,
``[gates.layer_overrides]`` keys that match nothing and misspelt table rows were all accepted and did nothing;
the ncnn table gained a ``#no_such_layer`` line. Now each is a ConfigError/TableError listing the closest
names, and node names, tensor names and folded BatchNormalization names all mean the node they name.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from harness.cli import main as cli_main
from harness.engine import checks
from harness.engine.remedy import layer_remedy, toml_list
from harness.engine.stages import SuiteStages
from harness.errors import ConfigError, TableError
from harness.model.names import LayerNames
from harness.quant import (
    build_plan, fold_batchnorm, get_profile, ncnn_table_to_plan, plan_to_ncnn_table, qtable_float_layers,
    tpu_table_to_plan,
)
from harness.quant.plan import QuantPlan
from harness.quant.plan_tables import ranges_to_tpu_table
from harness.quant.tables import NcnnTable, TpuCalibrationRow, format_ncnn_table
from harness.suite import load_suite
from model_factory import conv_relu_model, depthwise_model
from test_plugin import write_suite


# --- the names module --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bn_names() -> LayerNames:
    """conv1 -> BatchNormalization bn1 (folded into conv1) -> unnamed Relu -> pool -> flatten -> fc."""
    proto = conv_relu_model()
    return LayerNames(fold_batchnorm(proto)[0], original=proto, model="m.onnx")


@pytest.mark.parametrize("given, node", [
    ("conv1", "conv1"), ("fc", "fc"),            # node names
    ("pool_out", "pool"), ("output", "fc"),      # tensor names -> producer
    ("relu_out", "relu_out"),                    # a node without a name is called by its first output
    ("bn1", "conv1"), ("bn_out", "conv1"),       # the folded BatchNormalization and its output -> the Conv
    ("conv_out", "conv1"),                       # the pre-BN tensor folding removed
])
def test_resolves_nodes_tensors_and_folded_batchnorm(bn_names, given, node):
    assert bn_names.resolve([given], where="x") == {node}


def test_folded_batchnorm_name_keeps_the_conv_it_was_folded_into_float(bn_names):
    proto = conv_relu_model()
    folded_bn = fold_batchnorm(proto)[0]
    profile = get_profile("ncnn-int8", float_layers=["bn1"]).with_layer_names(
        lambda key, given: bn_names.resolve(given, where=key))
    plan = build_plan(folded_bn, profile, {"input": _range(), "flat": _range()})
    assert plan.float_layers == {"conv1"} and list(plan.weights) == ["fc_w"]


def test_unknown_name_is_a_config_error_with_the_closest_names(bn_names):
    with pytest.raises(ConfigError) as info:
        bn_names.resolve(["Conv1"], where="[quant] float_layers (s.toml)")
    message = str(info.value)
    assert message.startswith("Got layer name 'Conv1' in [quant] float_layers (s.toml). "
                              "Expected a node or tensor name of m.onnx. Try: one of 'conv1'")
    assert message.endswith("(closest names).")


@pytest.mark.parametrize("given, close", [("onv", "conv1"), ("flaten", "flatten"), ("Pool", "pool_out")])
def test_closest_names_include_tails_and_typos(bn_names, given, close):
    with pytest.raises(ConfigError, match="closest names") as info:
        bn_names.resolve([given], where="here")
    assert repr(close) in str(info.value).split("Try:")[1]


def test_every_unknown_name_is_listed_with_a_hint_for_inputs_and_weights(bn_names):
    with pytest.raises(ConfigError) as info:
        bn_names.resolve(["input", "fc_w", "conv1", "nothing_like_it_at_all"], where="w")
    message = str(info.value)
    assert "Got 3 unknown layer names 'input', 'fc_w', 'nothing_like_it_at_all' in w" in message
    assert "'input' is the model input, not a layer; name the layer that reads it: 'conv1'" in message
    assert "'fc_w' is a weight, not a layer; name the layer that reads it: 'fc'" in message
    assert "none is close; the first are 'conv1'" in message


# --- a suite on a tiny model (the plugin tests' project, without pytester) -------------------------------------
@pytest.fixture
def project(tmp_path: Path) -> Path:
    onnx.save(depthwise_model(), str(tmp_path / "model.onnx"))
    for folder, seed0, n in (("eval", 0, 2), ("calib", 100, 3)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            rng = np.random.default_rng(seed0 + i)
            cv2.imwrite(str(tmp_path / folder / f"img_{i}.png"), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return tmp_path


def _stages(project: Path, *, quant_extra: str = "", gates_extra: str = "", profile: str = "ncnn-int8") -> SuiteStages:
    path = write_suite(project, quant_extra=quant_extra)
    text = path.read_text().replace('profile = "ncnn-int8"', f'profile = "{profile}"')
    if profile != "ncnn-int8":
        text = text.replace("activation_bits = 16\n", "")
    path.write_text(text + gates_extra)
    return SuiteStages(load_suite(path), golden_root=project / "golden", threads=1)


def _quantizes(plan: QuantPlan, node: str, weight: str) -> bool:
    return weight in plan.weights or any(consumer == node for _, consumer in plan.activations)


def test_suite_float_layers_unknown_name_is_the_suites_config_error(project):
    stages = _stages(project, quant_extra='float_layers = ["no_such_layer"]')
    with pytest.raises(ConfigError) as info:
        stages.quantized
    assert str(info.value).startswith("Got layer name 'no_such_layer' in [quant] float_layers (tiny.toml). "
                                      "Expected a node or tensor name of model.onnx.")
    # a check that needs the plan fails with that message instead of a traceback
    result = checks.run_check(stages, "layerwise")
    assert isinstance(result.error, ConfigError) and "no_such_layer" in str(result.error)


@pytest.mark.parametrize("name", ["dw", "dw_out"])  # the node, and its output tensor (what reports show)
def test_suite_float_layers_by_node_or_tensor_keep_the_layer_float(project, name):
    assert _quantizes(_stages(project).quantized.plan, "dw", "dw_w")
    plan = _stages(project, quant_extra=f'float_layers = ["{name}"]').quantized.plan
    assert not _quantizes(plan, "dw", "dw_w") and plan.float_layers == {"dw"}
    assert _quantizes(plan, "conv1", "conv1_w")


def test_suite_high_precision_layers_are_checked_too(project):
    with pytest.raises(ConfigError, match=r"Got layer name 'dw_typo' in \[quant\] high_precision_layers \(tiny.toml\)"
                                          r".*one of 'dw'"):
        _stages(project, quant_extra='high_precision_layers = ["dw_typo"]', profile="nnie-int8").quantized
    plan = _stages(project, quant_extra='high_precision_layers = ["dw_out"]', profile="nnie-int8").quantized.plan
    assert plan.weights["dw_w"].scheme.bits == 16 and plan.weights["conv1_w"].scheme.bits == 8


@pytest.mark.parametrize("key, what, hint", [
    ('"dw_outt" = { cosine_min = 0.5 }', "names no compared tensor", "one of 'dw_out'"),
    ('"conv9*" = { skip = true }', "matches no layer", "check the spelling"),
    ('"dw" = { cosine_min = 0.5 }', "names no compared tensor", "the tensor(s) of what it names: 'dw_out'"),
    # conv1's output is fused into relu1 (never compared): the hint names the tensor that is
    ('"conv1_out" = { cosine_min = 0.5 }', "names no compared tensor", "'relu1_out'"),
])
def test_layer_override_that_matches_nothing_is_an_error(project, key, what, hint):
    stages = _stages(project, gates_extra=f"[gates.layer_overrides]\n{key}\n")
    with pytest.raises(ConfigError) as info:
        stages.quantized
    message = str(info.value)
    assert message.startswith(f"Got [gates.layer_overrides] {key.split(' = ')[0].strip(chr(34))!r} (tiny.toml), "
                              f"which {what} of model.onnx")
    assert hint in message


def test_layer_overrides_that_match_are_accepted(project):
    extra = '[gates.layer_overrides]\n"dw_out" = { cosine_min = 0.5 }\n"relu*" = { skip = true }\n'
    assert _stages(project, gates_extra=extra).quantized.plan.weights


# --- calibrate --set ----------------------------------------------------------------------------------------
def _calibrate_args(project: Path, *extra: str) -> list[str]:
    return ["calibrate", str(project / "model.onnx"), "--images", str(project / "calib"), "--mean", "127.5",
            "--std", "64", "--no-progress", "--profile", "ncnn-int8", "--method", "minmax", *extra]


def test_calibrate_set_unknown_float_layer_exits_2_with_the_message(project, capsys):
    out = project / "m.table"
    assert cli_main(_calibrate_args(project, "--out", str(out), "--set", 'float_layers=["no_such_layer"]')) == 2
    err = capsys.readouterr().err
    assert "Got layer name 'no_such_layer' in --set float_layers. Expected a node or tensor name of model.onnx." in err
    assert not out.exists()


def test_calibrate_set_tensor_name_keeps_its_layer_float(project):
    out = project / "m.table"
    assert cli_main(_calibrate_args(project, "--out", str(out), "--set", 'float_layers=["dw_out"]')) == 0
    lines = out.read_text().splitlines()
    assert "#dw" in lines and not any(line.startswith(("dw ", "dw_param_0")) for line in lines)


# --- tables ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folded() -> onnx.ModelProto:
    return fold_batchnorm(depthwise_model())[0]


def test_plan_with_unknown_float_layer_writes_no_table(folded):
    with pytest.raises(ConfigError, match=r"Got layer name 'no_such_layer' in the plan's float_layers"):
        plan_to_ncnn_table(folded, QuantPlan(float_layers=frozenset({"no_such_layer"})))


def test_ncnn_table_rows_naming_no_layer_are_listed_with_close_names(folded, tmp_path):
    profile = get_profile("ncnn-int8")
    plan = build_plan(folded, profile, {t: _range() for t in ("input", "relu1_out", "flat")})
    text = format_ncnn_table(plan_to_ncnn_table(folded, plan)) + "#dww\n#dw_out\n"
    path = tmp_path / "m.table"
    path.write_text(text)
    from harness.quant import read_ncnn_table

    with pytest.raises(TableError) as info:
        ncnn_table_to_plan(folded, read_ncnn_table(path), profile, source="the ncnn table m.table")
    message = str(info.value)
    assert message.startswith("Got 2 unknown layer names 'dw_out', 'dww' in the ncnn table m.table.")
    assert "for 'dww': one of 'dw'" in message and "for 'dw_out': 'dw_out' is a tensor, not a node; its layer is 'dw'" in message


def _range():
    from harness.quant.calibrate import CalibrationRange

    return CalibrationRange(method="minmax", lo=-1.0, hi=1.0, threshold=1.0, observed_min=-1.0, observed_max=1.0)


def test_qtable_rows_are_resolved_or_refused_with_close_names():
    proto = conv_relu_model()
    folded_bn = fold_batchnorm(proto)[0]
    names = LayerNames(folded_bn, original=proto)
    assert qtable_float_layers(folded_bn, {"bn1": "F32", "pool_out": "F16"}, names=names) == {"conv1", "pool"}
    with pytest.raises(TableError, match=r"Got layer name 'fcc' in the qtable\. .*one of 'fc'"):
        qtable_float_layers(folded_bn, {"fcc": "INT8"})  # an INT8 row naming nothing is as wrong as an F32 one


def test_tpu_table_rows_naming_no_tensor_are_a_warning(folded, caplog):
    profile = get_profile("bm1684-int8")
    from harness.quant.calibration import placement_for

    ranges = {t: _range() for t in placement_for(folded, profile).tensors_to_calibrate()}
    table = ranges_to_tpu_table(ranges)
    table.rows["dw_outt"] = TpuCalibrationRow(threshold=1.0, min=-1.0, max=1.0)
    with caplog.at_level(logging.WARNING, logger="harness.quant.plan_tables"):
        plan = tpu_table_to_plan(folded, table, profile)
    assert plan.activations
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "Got layer name 'dw_outt' in the calibration table" in warning and "one of 'dw_out'" in warning
    assert "tpu-mlir ignores rows that name no tensor" in warning


# --- the remedy text names what the harness then accepts ----------------------------------------------------
def test_layerwise_remedy_pasted_verbatim_keeps_the_layer_float(project):
    stages = _stages(project, quant_extra='depthwise_weight_granularity = "per_tensor"')
    result = checks.layerwise(stages)
    summary = result.verdicts[0]
    assert not summary.passed and result.sections["first_divergent"]["node_name"] == "dw"
    suite_key = summary.remedy.split("to confirm here first: ")[1]
    table, _, line = suite_key.partition(" ")
    assert table == "[quant]"
    assert tomllib.loads(line)["float_layers"] == ["dw"]
    again = _stages(project, quant_extra=f'depthwise_weight_granularity = "per_tensor"\n{line}')
    assert not _quantizes(again.quantized.plan, "dw", "dw_w")


@pytest.mark.parametrize("profile", ["ncnn-int8", "nnie-int8", "bm1684-int8", "ort-qdq", "tflite-uint8"])
def test_every_profiles_remedy_key_is_toml_naming_the_node(profile):
    node = 'odd "name"\\with/slashes'
    text = layer_remedy(get_profile(profile), node, "t")
    keys = re.findall(r"\[quant\] (\w+ = \[.*?\])(?:;|$)", text)
    assert keys and all(tomllib.loads(k) in ({"float_layers": [node]}, {"high_precision_layers": [node]}) for k in keys)
    assert tomllib.loads(f"x = {toml_list('a', node)}")["x"] == ["a", node]


def test_tpu_mlir_remedy_names_the_qtable_row_by_tensor():
    # tpu-mlir names an op after its first output tensor; the harness's qtable reader takes either
    assert "qtable row `404 F32`" in layer_remedy(get_profile("bm1684-int8"), "Transpose_404", "404")

