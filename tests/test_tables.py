"""ncnn .table and tpu-mlir calibration table / qtable: exact round trips, strict reading, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.quant.tables as tables
from harness.errors import NumericError, TableError
from harness.quant.tables import (
    NcnnTable,
    TpuCalibrationRow,
    TpuCalibrationTable,
    ncnn_scale_from_onnx,
    ncnn_scale_from_threshold,
    ncnn_scales_from_absmax,
    onnx_scale_from_ncnn,
    onnx_scale_from_threshold,
    read_ncnn_table,
    read_qtable,
    read_tpu_calibration_table,
    threshold_from_ncnn,
    threshold_from_onnx_scale,
    write_ncnn_table,
    write_qtable,
    write_tpu_calibration_table,
)

f32 = st.floats(min_value=float(np.float32(1e-30)), max_value=float(np.float32(1e30)), allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(f32, min_size=1, max_size=8), min_size=1, max_size=5), st.lists(f32, min_size=1, max_size=5))
def test_ncnn_round_trip_is_exact(tmp_path_factory, weights, acts):
    path = tmp_path_factory.mktemp("t") / "model.table"
    table = NcnnTable(
        weight_scales={f"conv{i}": np.asarray(w, dtype=np.float32) for i, w in enumerate(weights)},
        activation_scales={f"conv{i}": a for i, a in enumerate(acts)},
        float_layers=frozenset({"conv0"}),
    )
    write_ncnn_table(table, path)
    back = read_ncnn_table(path)
    assert back == table
    for k, w in table.weight_scales.items():
        assert back.weight_scales[k].tobytes() == np.asarray(w, np.float32).tobytes()


def test_ncnn_file_layout_and_order(tmp_path):
    table = NcnnTable(
        weight_scales={"conv_b": np.array([2.5, 0.0], np.float32), "conv_a": np.array([127.0], np.float32)},
        activation_scales={"conv_b": 12.25, "conv_a": 3.0},
        float_layers=frozenset({"conv_a", "pool_x"}),
    )
    text = write_ncnn_table(table, tmp_path / "m.table").read_text()
    assert text.splitlines() == [
        "conv_b_param_0 2.5 0",
        "#conv_a_param_0 127",
        "conv_b 12.25",
        "#conv_a 3",
        "#pool_x",
    ]
    assert list(read_ncnn_table(tmp_path / "m.table").weight_scales) == ["conv_b", "conv_a"]


def test_ncnn_hash_lines_keep_float_and_free_comments(tmp_path):
    p = tmp_path / "in.table"
    p.write_text("# a free comment\n#\nconv1_param_0 1 2\n#conv2_param_0 3 4\n\nconv1 5\r\n#conv2\n#relu9 7\n")
    t = read_ncnn_table(p)
    assert t.float_layers == frozenset({"conv2", "relu9"})
    assert list(t.weight_scales) == ["conv1", "conv2"]
    assert t.weight_scales["conv2"].tolist() == [3.0, 4.0]
    assert t.activation_scales == {"conv1": 5.0, "relu9": 7.0}


def test_dead_channels_written_as_zero(tmp_path):
    w = np.zeros((3, 2, 3, 3), np.float32)
    w[0] = 0.5
    w[2, 0, 0, 0] = -2.0
    absmax = np.abs(w).reshape(3, -1).max(axis=1)
    s = ncnn_scales_from_absmax(absmax)
    assert s.tolist() == [np.float32(254.0), 0.0, np.float32(63.5)]
    assert ncnn_scales_from_absmax(absmax, bits=6).tolist() == [62.0, 0.0, 15.5]
    path = write_ncnn_table(NcnnTable(weight_scales={"c": s}), tmp_path / "d.table")
    assert path.read_text() == "c_param_0 254 0 63.5\n"
    with pytest.raises(NumericError):
        ncnn_scales_from_absmax(np.array([np.nan]))


def test_scale_conversions():
    assert onnx_scale_from_ncnn(np.array([127 / 2.0, 0.0])).tolist() == [np.float32(2.0 / 127), 1.0]
    assert ncnn_scale_from_onnx(np.float32(0.5)) == 2.0
    assert threshold_from_ncnn(np.array([63.5, 0.0])).tolist() == [2.0, 0.0]
    assert ncnn_scale_from_threshold(2.0) == np.float32(63.5)
    assert onnx_scale_from_threshold(12.7) == np.float32(0.1)
    assert threshold_from_onnx_scale(np.float32(0.5)) == 63.5
    with pytest.raises(NumericError):
        ncnn_scale_from_onnx(0.0)


@pytest.mark.parametrize(
    "content, line, needle",
    [
        ("conv1_param_0 1 2\nconv1 abc\n", 2, "'abc'"),
        ("conv1_param_0 1 x2\n", 1, "'x2'"),
        ("conv1_param_0\n", 1, "no scales"),
        ("conv1 1 2\n", 1, "2 values"),
        ("conv1_param_1 1\n", 1, "conv1_param_1"),
        ("conv1 1\n\nconv1 2\n", 3, "duplicate"),
        ("conv1 nan\n", 1, "non-finite"),
        ("conv1 -3\n", 1, "negative"),
        ("#this is a note\n", 1, "space after '#'"),
    ],
)
def test_ncnn_malformed_names_file_line_and_field(tmp_path, content, line, needle):
    p = tmp_path / "bad.table"
    p.write_text(content)
    with pytest.raises(TableError) as info:
        read_ncnn_table(p)
    msg = str(info.value)
    assert f"{p}:{line}:" in msg and needle in msg and "Try:" in msg


def test_tpu_calibration_table_round_trip(tmp_path):
    table = TpuCalibrationTable(
        rows={"input": TpuCalibrationRow(threshold=2.6400001, min=-2.1, max=2.64),
              "conv1_Relu": TpuCalibrationRow(threshold=0.1 + 0.2, min=0.0, max=7.25e-5)},
        int4_rows={"conv1_Relu": TpuCalibrationRow(threshold=0.125, min=0.0, max=1.0)},
        comments=("genetated time: 2024-06-11", "histogram number: 2048"),
    )
    p = write_tpu_calibration_table(table, tmp_path / "cali_table")
    lines = p.read_text().splitlines()
    assert lines[0] == "# genetated time: 2024-06-11" and lines[2].split()[0] == "input"
    assert "#int4_th" in lines
    assert read_tpu_calibration_table(p) == table


def test_tpu_calibration_table_reads_tool_output(tmp_path):
    p = tmp_path / "cali_table"
    p.write_text("# genetated time: x\n# sample number: 100\n#tpu-mlir calibration table\n"
                 "input 1.0000000 -1.0000000 1.0000000\nconv 3.5000000 0.0000000 4.0000000\n")
    t = read_tpu_calibration_table(p)
    assert list(t.rows) == ["input", "conv"]
    assert t.rows["conv"] == TpuCalibrationRow(threshold=3.5, min=0.0, max=4.0)
    p.write_text("# h\ninput 1.0 -1.0\n")
    with pytest.raises(TableError, match=r"cali_table:2: row has 3 fields"):
        read_tpu_calibration_table(p)
    p.write_text("# h\ninput 1.0 -1.0 1.0\ninput 1.0 -1.0 zz\n")
    with pytest.raises(TableError, match=r":3: bad max of 'input' 'zz'"):
        read_tpu_calibration_table(p)


def test_qtable_round_trip_and_errors(tmp_path):
    modes = {"conv1": "F32", "conv2": "BF16", "fc": "INT8", "softmax": "F16"}
    p = write_qtable(modes, tmp_path / "qtable")
    assert read_qtable(p) == modes and list(read_qtable(p)) == list(modes)
    p.write_text("# op_name quantize_mode\nconv1 F64\n")
    with pytest.raises(TableError, match=r"qtable:2: bad mode 'F64'"):
        read_qtable(p)
    p.write_text("conv1\n")
    with pytest.raises(TableError, match=r"qtable:1: row has 1 fields"):
        read_qtable(p)
    with pytest.raises(TableError):
        write_qtable({"conv1": "fp32"}, tmp_path / "q2")
    assert not (tmp_path / "q2").exists()


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.table"
    old = NcnnTable(activation_scales={"conv1": 1.0})
    write_ncnn_table(old, path)
    before = path.read_bytes()

    # a value that cannot be written: nothing is touched
    with pytest.raises(NumericError):
        write_ncnn_table(NcnnTable(activation_scales={"conv1": float("nan")}), path)
    assert path.read_bytes() == before

    # the rename itself fails: the temp file is cleaned up and the old table survives
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tables.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_ncnn_table(NcnnTable(activation_scales={"conv1": 2.0, "conv2": 3.0}), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.table"]


def test_non_utf8_file_is_a_table_error(tmp_path):
    p = tmp_path / "bin.table"
    p.write_bytes(b"\xff\xfe\x00conv")
    with pytest.raises(TableError, match="not UTF-8"):
        read_ncnn_table(p)
