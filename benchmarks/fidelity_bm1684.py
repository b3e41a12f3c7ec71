"""The fidelity table: the harness's BM1684 / BM1684X simulation of MobileNetV2 against tpu-mlir's own outputs.

What it measures: for each profile, the simulation of MobileNetV2 with tpu-mlir's own calibration table
(read through the project's reader, ``tpu_table_to_ranges``) on the 24 inputs tpu-mlir was fed
(``logits24.npz``), compared with tpu-mlir's dequantised int8 logits of the same chip, in units of the
device's quantisation step; and, for BM1684, every tensor of image 0 against its dump
(``all_tensors_img0_bm1684.npz``, tpu-mlir names mapped onto ONNX tensors). Steps are the scales of the
lowered graphs (``mnv2_<chip>_int8_sym_tpu.mlir``). Columns:

* ``max steps``: the largest difference of any compared element, in steps;
* ``> 1 step``: the largest share, over the compared tensors, of elements more than one step apart
  (the bar: at most 0.1 %); ``differ``: the same for elements not on the same code at all;
* ``top-1 = real``: images whose top-1 class is the toolchain's (the bar: all of them);
* ``top-1 = fp32``: images whose top-1 is fp32's, for the simulation and for the toolchain.

``--override key=value`` (repeatable) applies profile overrides, e.g. ``--override lowering=none`` for the
profile's schemes without the integer lowering; ``--own-calibration`` calibrates with the harness (KL on
the same 24 inputs) instead of reading tpu-mlir's table: the issue's "19 of 24" number.

    QUANT_HARNESS_REALMODELS=../shared/realmodels python benchmarks/fidelity_bm1684.py [--profile bm1684-int8] ...
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.model import load_model  # noqa: E402
from harness.quant import build_plan, calibrate_activations, fold_batchnorm, get_profile  # noqa: E402
from harness.quant.fidelity import FidelityReport, compare_with_toolchain, tpu_mlir_reference  # noqa: E402
from harness.quant.plan_tables import tpu_table_to_ranges  # noqa: E402
from harness.quant.simulate import write_qdq_model  # noqa: E402
from harness.quant.tables import read_tpu_calibration_table  # noqa: E402
from harness.quant.tpu_mlir import TopGraph  # noqa: E402

CHIP_OF = {"bm1684-int8": "bm1684", "bm1684x-int8": "bm1684x"}


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def run(profile_name: str, overrides: dict, *, own_calibration: bool, realmodels: Path) -> FidelityReport:
    data = realmodels.parent / "toolchains" / "tpu-mlir" / "mobilenet_v2"
    chip = CHIP_OF.get(profile_name, "bm1684")
    model = load_model(realmodels / "mobilenet_v2" / "mobilenet_v2.onnx")
    folded = fold_batchnorm(model.proto)[0]
    top = TopGraph(folded)
    profile = get_profile(profile_name, **overrides)
    logits = np.load(data / "logits24.npz")
    inputs = logits["inputs"]
    if own_calibration:
        ranges = calibrate_activations(folded, profile, lambda: (inputs[i: i + 1] for i in range(len(inputs))))
    else:
        ranges = tpu_table_to_ranges(read_tpu_calibration_table(data / "mnv2_cali_table"), folded)
    plan = build_plan(folded, profile, ranges)
    qdq = write_qdq_model(folded, plan)
    steps, real_tensors = tpu_mlir_reference(top, data / f"mnv2_{chip}_int8_sym_tpu.mlir",
                                             data / "all_tensors_img0_bm1684.npz" if chip == "bm1684" else None)
    label = profile_name + "".join(f" {k}={v}" for k, v in overrides.items()) + (" (own KL)" if own_calibration else "")
    return compare_with_toolchain(qdq, plan, inputs=inputs, real_outputs=logits[f"logits_{chip}"],
                                  fp32_outputs=logits["logits_top_f32"], real_tensors=real_tensors, steps=steps,
                                  profile=label)


def print_table(reports: list[FidelityReport]) -> None:
    print(f"{'profile':<44} {'tensors':>7} {'max steps':>9} {'> 1 step':>9} {'differ':>8} {'top-1 = real':>12} "
          f"{'sim = fp32':>10} {'real = fp32':>11} {'cos sim/real':>13}")
    for r in reports:
        t = r.task
        differ = max(a.differing for a in r.tensors + [r.output])
        print(f"{r.profile:<44} {len(r.tensors) + 1:>7} {r.max_steps:>9.1f} {100 * r.worst_share_beyond_one_step:>8.2f}% "
              f"{100 * differ:>7.3f}% "
              f"{t.sim_equals_real:>5} / {t.images:<4} {t.sim_equals_fp32:>4} / {t.images:<3} {t.real_equals_fp32:>5} / "
              f"{t.images:<3} {t.sim_cosine_fp32:>6.3f}/{t.real_cosine_fp32:.3f}")
    for r in reports:
        worst = sorted(r.tensors + [r.output], key=lambda a: (-a.beyond_one_step, -a.max_steps))[:3]
        print(f"  {r.profile}: worst " + "; ".join(f"{a.tensor} {100 * a.beyond_one_step:.2f}% > 1 step, max "
                                                     f"{a.max_steps:.0f}" for a in worst))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", help="profile(s) to measure (default: bm1684-int8, bm1684x-int8)")
    parser.add_argument("--override", action="append", default=[], help="profile override key=value (repeatable)")
    parser.add_argument("--own-calibration", action="store_true", help="calibrate with the harness instead of the table")
    args = parser.parse_args()
    root = os.environ.get("QUANT_HARNESS_REALMODELS")
    if not root or not (Path(root).parent / "toolchains" / "tpu-mlir" / "mobilenet_v2").is_dir():
        print("needs QUANT_HARNESS_REALMODELS with ../toolchains/tpu-mlir/mobilenet_v2 beside it", file=sys.stderr)
        return 2
    overrides = dict(_override(o) for o in args.override)
    reports = [run(p, overrides, own_calibration=args.own_calibration, realmodels=Path(root))
               for p in args.profile or ["bm1684-int8", "bm1684x-int8"]]
    print_table(reports)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
