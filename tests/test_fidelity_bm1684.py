"""The bm1684-int8 / bm1684x-int8 simulation against tpu-mlir's own outputs on MobileNetV2 (no tpu-mlir needed).

Data: ``$QUANT_HARNESS_REALMODELS/../toolchains/tpu-mlir/mobilenet_v2`` (see its README): tpu-mlir's
calibration table, its lowered int8 graphs, the 24 inputs it was fed with its logits, and every tensor
of the first input on BM1684. The table is read through the project's reader, as a suite's
``[quant] table =`` reads it. The bar (issue 16): within one quantisation step on >= 99.9 % of the
elements of every compared tensor, and the same top-1 as the chip on every image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.model import load_model
from harness.quant import build_plan, fold_batchnorm, get_profile
from harness.quant.fidelity import compare_with_toolchain, tpu_mlir_reference
from harness.quant.lowering import LoweredAdd, LoweredPool, LoweredWeighted
from harness.quant.plan_tables import tpu_table_to_ranges
from harness.quant.simulate import write_qdq_model
from harness.quant.tables import read_tpu_calibration_table
from harness.quant.tpu_mlir import TopGraph, read_lowered_graph

pytestmark = pytest.mark.realmodel
WITHIN_ONE_STEP_MIN = 0.999


@pytest.fixture(scope="module")
def toolchain(realmodels_dir) -> Path:
    folder = realmodels_dir.parent / "toolchains" / "tpu-mlir" / "mobilenet_v2"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (tpu-mlir's MobileNetV2 outputs, see ../shared/toolchains/README.md)")
    return folder


@pytest.fixture(scope="module")
def mnv2(realmodels_dir, toolchain):
    folded = fold_batchnorm(load_model(realmodels_dir / "mobilenet_v2" / "mobilenet_v2.onnx").proto)[0]
    ranges = tpu_table_to_ranges(read_tpu_calibration_table(toolchain / "mnv2_cali_table"), folded)
    return folded, ranges


def _plan(mnv2, profile):
    folded, ranges = mnv2
    return build_plan(folded, get_profile(profile), ranges)


def test_the_table_names_exactly_the_tensors_of_tpu_mlirs_fused_graph(mnv2, toolchain):
    folded, ranges = mnv2
    top = TopGraph(folded)
    rows = read_tpu_calibration_table(toolchain / "mnv2_cali_table").rows
    assert {top.onnx_tensor(name) for name in rows} == set(top.tensors)  # every row maps, every top tensor has one
    assert len(top.merged) == 2 and len(top.fused_relu) == 35
    # the Conv under a ReLU6 reads the Clip's row: the fused op has one output
    conv, clip = "/features/features.0/features.0.0/Conv_output_0", "/features/features.0/features.0.2/Clip_output_0"
    assert ranges[conv] is ranges[clip]
    for profile in ("bm1684-int8", "bm1684x-int8"):
        _plan(mnv2, profile)  # every site has a range (today: "Got no range for 100 tensor(s)")


def test_tpu_mlirs_own_row_names_are_not_reported_unknown(mnv2, toolchain, caplog):
    """Rows named ``<tensor>_<op type>`` are applied (above), so the unknown-rows warning must not list them
    (it did: every one of the table's rows was "unknown", before the name mapping)."""
    from harness.model.names import LayerNames
    from harness.quant.plan_tables import warn_unknown_rows

    folded, _ = mnv2
    table = read_tpu_calibration_table(toolchain / "mnv2_cali_table")
    assert warn_unknown_rows(table, LayerNames(folded), proto=folded) == []
    planted = type(table)(rows={**table.rows, "no_such_tensor_Conv": next(iter(table.rows.values()))})
    assert warn_unknown_rows(planted, LayerNames(folded), proto=folded) == ["no_such_tensor_Conv"]


@pytest.mark.parametrize("profile, chip", [("bm1684-int8", "bm1684"), ("bm1684x-int8", "bm1684x")])
def test_lowering_parameters_equal_tpu_mlirs_lowered_graph(mnv2, toolchain, profile, chip):
    folded, _ = mnv2
    top = TopGraph(folded)
    real = {top.onnx_tensor(name): op for name, op in read_lowered_graph(toolchain / f"mnv2_{chip}_int8_sym_tpu.mlir").items()}
    plan = _plan(mnv2, profile)
    assert sum(isinstance(op, LoweredWeighted) for op in plan.lowered.values()) == 51  # 50 Conv2D + 1 MatMul
    for op in plan.lowered.values():
        theirs = real[op.result]
        if isinstance(op, LoweredWeighted):
            keys = ("rshift", "multiplier") if op.op_type == "Conv" else ("rshifts", "multipliers")
            assert np.asarray(op.params.requant.shift).reshape(-1).tolist() == theirs.ints[keys[0]], op.node
            if chip == "bm1684x":
                assert np.asarray(op.params.requant.multiplier).reshape(-1).tolist() == theirs.ints[keys[1]], op.node
        elif isinstance(op, LoweredAdd):
            assert op.requant.multiplier.tolist() == theirs.ints["multipliers"], op.node
            assert op.requant.shift.tolist() == theirs.ints["rshifts"], op.node
        else:
            assert isinstance(op, LoweredPool)
            assert [int(op.requant.multiplier)] == theirs.ints["multiplier"] and [int(op.requant.shift)] == theirs.ints["rshift"]
    # storage type and scale of every quantised tensor
    for (tensor, _), tq in plan.activations.items():
        theirs = real.get(tensor)
        if theirs is None or theirs.storage is None:
            continue
        assert ("u8" if not tq.scheme.signed else "i8") == theirs.storage, tensor
        assert float(np.asarray(tq.scale)) == pytest.approx(theirs.scale, rel=1e-6), tensor


@pytest.mark.parametrize("profile, chip", [("bm1684-int8", "bm1684"), ("bm1684x-int8", "bm1684x")])
def test_simulation_agrees_with_the_chip_within_one_step_and_on_every_top1(mnv2, toolchain, profile, chip):
    folded, _ = mnv2
    top = TopGraph(folded)
    plan = _plan(mnv2, profile)
    steps, real_tensors = tpu_mlir_reference(top, toolchain / f"mnv2_{chip}_int8_sym_tpu.mlir",
                                             toolchain / "all_tensors_img0_bm1684.npz" if chip == "bm1684" else None)
    assert len(real_tensors) == (64 if chip == "bm1684" else 0) and len(top.tensors) == 64
    logits = np.load(toolchain / "logits24.npz")
    report = compare_with_toolchain(write_qdq_model(folded, plan), plan, inputs=logits["inputs"],
                                    real_outputs=logits[f"logits_{chip}"], fp32_outputs=logits["logits_top_f32"],
                                    real_tensors=real_tensors, steps=steps, profile=profile)
    for agreement in report.tensors + [report.output]:
        assert agreement.within_one_step >= WITHIN_ONE_STEP_MIN, agreement
        # measured: the same code on every element but 2 of 62720 of the merged features.18 Conv (a float32 sum
        # order in the merged weights): a guard that the simulation stays the chip's integer arithmetic
        assert agreement.differing <= 1e-4, agreement
    task = report.task
    assert task.every_image_agrees, task
    # so the simulation keeps fp32's top-1 exactly where the chip does: 8 of 24 on BM1684, 22 on BM1684X
    assert task.sim_equals_fp32 == task.real_equals_fp32 == {"bm1684": 8, "bm1684x": 22}[chip]
