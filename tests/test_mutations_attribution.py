"""Planted defects on the bundled detector: the layerwise verdict names the layer that really broke, and its
remedy, applied, fixes it (issue 13, items 3 and 4; the UltraFace BM1684 case on a bundled model).

The defect: tpu-mlir's own calibration table of the detector (the bm1684 suite's golden ``calibration.cali``)
with the threshold of one box-regression head ``/loc.1/loc.1.1/Conv_output_0`` cut to a tenth, so that
quantising the head's output clips the boxes. Its consumer (a Transpose, which only moves values) is where the
error shows; the layer to keep in float is the Conv that writes the clipped tensor. Before the fix the verdict
named the Transpose, and keeping the Transpose in float changes nothing, since its input is still clipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.engine import run_suite
from harness.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "suites" / "assets"
HEAD = "/loc.1/loc.1.1/Conv_output_0"
HEAD_CONV = "/loc.1/loc.1.1/Conv"


def _suite(tmp_path: Path, *, quant_extra: str, gates: str = "", base: str = "detector_bm1684_int8") -> Path:
    text = (ROOT / "suites" / f"{base}.toml").read_text()
    text = text.replace('golden_from = "detector_ncnn_int8"', "")
    text = text.replace('path = "assets/', f'path = "{ASSETS.as_posix()}/')
    text = text.replace('root = "assets/', f'root = "{ASSETS.as_posix()}/')
    text = text.replace("\n[quant]\n", f"\n[quant]\n{quant_extra}\n")
    text = text.replace("\n[gates]\n", f"\n[gates]\n{gates}\n")
    path = tmp_path / f"planted_{base}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def clipped_table(tmp_path: Path) -> Path:
    rows = []
    for line in (ROOT / "golden" / "detector_bm1684_int8" / "calibration.cali").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in (HEAD, f"{HEAD}_Conv"):  # plain or tpu-mlir's <tensor>_<op type> name
            fields[1] = repr(float(fields[1]) / 10)
        rows.append(" ".join(fields))
    path = tmp_path / "clipped.cali"
    path.write_text("\n".join(rows) + "\n")
    return path


def _layerwise(path: Path, tmp_path: Path):  # noqa: ANN202 - a CheckResult
    suite = load_suite(path)
    suite = suite.replace(data=suite.data.replace(max_images=4))
    return run_suite(suite, items=["layerwise"], golden_root=tmp_path / "golden").checks["layerwise"]


def test_a_clipped_head_range_names_its_conv_not_the_transpose(tmp_path: Path, clipped_table: Path) -> None:
    table = f'table = "{clipped_table.as_posix()}"'
    broken = _layerwise(_suite(tmp_path, quant_extra=table), tmp_path)
    assert not broken.passed
    fd = broken.sections["first_divergent"]
    assert fd["op_type"] == "Transpose" and fd["reason"] == "quantization"
    assert fd["cause"]["node"] == HEAD_CONV and fd["cause"]["tensor"] == HEAD
    verdict = broken.verdicts[0]
    assert f"quantisation of tensor {HEAD!r}" in verdict.message and f"{HEAD} F32" in verdict.remedy
    # Keeping the Transpose (what was named before the fix) in float does not help: its input is still clipped.
    transpose = _layerwise(_suite(tmp_path, quant_extra=f'{table}\nfloat_layers = ["{fd["node_name"]}"]'), tmp_path)
    assert not transpose.passed
    assert transpose.sections["first_divergent"]["cause"]["node"] == HEAD_CONV


@pytest.fixture
def clipped_ncnn_table(tmp_path: Path) -> Path:
    """The ncnn suite's golden table with the input scale of the head Conv raised tenfold (ncnn scales are
    multiplicative: the Conv's input is clipped at a tenth of its range)."""
    rows = []
    for line in (ROOT / "golden" / "detector_ncnn_int8" / "calibration.table").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == HEAD_CONV:
            fields[1] = repr(float(fields[1]) * 10)
        rows.append(" ".join(fields))
    path = tmp_path / "clipped.table"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_clipped_conv_input_names_the_conv_and_its_remedy_fixes_it(tmp_path: Path,
                                                                      clipped_ncnn_table: Path) -> None:
    table = f'table = "{clipped_ncnn_table.as_posix()}"'
    broken = _layerwise(_suite(tmp_path, quant_extra=table, base="detector_ncnn_int8"), tmp_path)
    assert not broken.passed
    fd = broken.sections["first_divergent"]
    # ncnn quantises a blob where a Conv reads it: that Conv owns the site and is the layer to keep in fp32
    assert fd["reason"] == "quantization" and fd["cause"]["node"] == HEAD_CONV
    remedy = broken.verdicts[0].remedy
    assert f"#{HEAD_CONV}_param_0" in remedy
    key = remedy.split("to confirm here first: ")[1].removeprefix("[quant] ")
    fixed = _layerwise(_suite(tmp_path, quant_extra=f"{table}\n{key}", base="detector_ncnn_int8"), tmp_path)
    assert fixed.passed, fixed.verdicts[0].message


def test_a_failure_on_sqnr_alone_names_a_first_divergent_layer(tmp_path: Path) -> None:
    # cosine and euclid pass everywhere on this suite; an SQNR bound above what the detector reaches decides
    check = _layerwise(_suite(tmp_path, quant_extra="", gates="layer_sqnr_db_min = 40"), tmp_path)
    assert not check.passed
    fd = check.sections["first_divergent"]
    assert fd is not None and fd["metric"] == "sqnr_db" and fd["bound"] == 40
    failing = [r for r in check.sections["layers"] if not r["passed"]]
    # rows that pass cosine show the SQNR bound they failed
    assert any(r["acc_cosine"] > 0.99 and "sqnr_db=" in r["failures"] for r in failing)
