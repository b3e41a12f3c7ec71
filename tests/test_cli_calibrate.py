"""``quant-harness calibrate``: output by suffix, refusal to overwrite, preprocessing options."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import onnx
import pytest

from harness.commands import calibrate
from harness.errors import ConfigError
from harness.quant.tables import read_ncnn_table, read_tpu_calibration_table
from test_calibration_driver import residual_model


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="quant-harness")
    calibrate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", *argv])
    return args.func(args)


@pytest.fixture()
def setup(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(residual_model(), model)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    common = [str(model), "--images", str(images), "--mean", "127.5", "--std", "64", "--no-progress"]
    return tmp_path, common


def test_writes_ncnn_table(setup):
    tmp, common = setup
    out = tmp / "m.table"
    assert _run([*common, "--profile", "ncnn-int8", "--out", str(out)]) == 0
    table = read_ncnn_table(out)
    assert list(table.weight_scales) == ["conv1", "conv2", "fc"] and list(table.activation_scales) == ["conv1", "conv2", "fc"]


def test_same_inputs_same_bytes_and_refuses_overwrite(setup):
    tmp, common = setup
    out = tmp / "m.table"
    _run([*common, "--profile", "ncnn-int8", "--out", str(out)])
    first = out.read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        _run([*common, "--profile", "ncnn-int8", "--out", str(out)])
    assert _run([*common, "--profile", "ncnn-int8", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() == first


def test_writes_tpu_table_and_qdq_model(setup):
    tmp, common = setup
    out, qdq = tmp / "m.cali", tmp / "q.onnx"
    assert _run([*common, "--profile", "bm1684-int8", "--out", str(out), "--qdq-out", str(qdq), "--max-images", "3"]) == 0
    table = read_tpu_calibration_table(out)
    # the rows of tpu-mlir's fused graph, named as tpu-mlir names them (Conv+Relu and Add+Relu are one op each)
    assert list(table.rows) == ["x", "r1_Relu", "c2_Conv", "r2_Relu", "g_GlobalAveragePool", "f_Flatten", "y_Gemm"]
    assert any("3 images" in c for c in table.comments)
    onnx.checker.check_model(onnx.load(qdq))


def test_writes_json_with_method_and_overrides(setup):
    tmp, common = setup
    out = tmp / "r.json"
    assert _run([*common, "--profile", "ncnn-int8", "--method", "minmax", "--out", str(out),
                 "--set", 'float_layers=["conv2"]']) == 0
    doc = json.loads(out.read_text())
    assert doc["format_version"] == 1 and doc["method"] == "minmax" and doc["images"] == 5
    assert doc["sites"] == [["x", "conv1"], ["f", "fc"]]
    assert all(r["method"] == "minmax" for r in doc["ranges"].values())


def test_preprocess_toml(setup):
    tmp, common = setup
    toml = tmp / "pre.toml"
    toml.write_text('[preprocess]\nmean = [127.5]\nstd = [64.0]\nchannel_order = "rgb"\n')
    out = tmp / "r.json"
    args = [common[0], "--images", common[2], "--preprocess", str(toml), "--no-progress"]
    assert _run([*args, "--profile", "ort-qdq", "--out", str(out)]) == 0
    with pytest.raises(ConfigError, match="--preprocess"):
        _run([*common, "--preprocess", str(toml), "--profile", "ort-qdq", "--out", str(tmp / "x.json")])


def test_user_errors(setup):
    tmp, common = setup
    with pytest.raises(ConfigError, match=r"\.table"):
        _run([*common, "--profile", "ncnn-int8", "--out", str(tmp / "m.txt")])
    with pytest.raises(ConfigError, match="profile"):
        _run([*common, "--profile", "ncnn", "--out", str(tmp / "m.table")])
    with pytest.raises(ConfigError, match="ncnn"):
        _run([*common, "--profile", "tflite-uint8", "--out", str(tmp / "m.table")])
    with pytest.raises(ConfigError, match="preprocessing"):
        _run([common[0], "--images", common[2], "--profile", "ncnn-int8", "--out", str(tmp / "n.table")])
