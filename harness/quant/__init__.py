"""The quantisation core: schemes, calibrators, BN folding, plans, profiles, tables, QDQ simulation.

Re-exports what the rest of the harness (suites, compare, CLI) uses, so callers import from
``harness.quant`` and the module layout can change underneath.
"""

from harness.quant.calibrate import METHODS, CalibrationRange, make_calibrator
from harness.quant.calibration import (
    QuantizedModel,
    activation_sites,
    build_plan,
    calibrate_activations,
    placement_for,
    quantize_model,
    run_calibrators,
)
from harness.quant.fold import FoldedPair, fold_batchnorm
from harness.quant.placement import Placement
from harness.quant.plan import ALL_CONSUMERS, QuantPlan, TensorQuant
from harness.quant.plan_tables import (
    ncnn_table_to_plan,
    plan_to_ncnn_table,
    qtable_float_layers,
    ranges_to_tpu_table,
    tpu_table_to_plan,
    tpu_table_to_ranges,
)
from harness.quant.profiles import PROFILES, Profile, get_profile, override_keys
from harness.quant.scheme import QuantScheme, dequantize, fake_quant, quant_params, quantize
from harness.quant.tables import (
    NcnnTable,
    TpuCalibrationTable,
    read_ncnn_table,
    read_qtable,
    read_tpu_calibration_table,
    write_ncnn_table,
    write_qtable,
    write_tpu_calibration_table,
)

__all__ = [
    "ALL_CONSUMERS", "METHODS", "PROFILES", "CalibrationRange", "FoldedPair", "NcnnTable", "Placement", "Profile",
    "QuantPlan", "QuantScheme", "QuantizedModel", "TensorQuant", "TpuCalibrationTable", "activation_sites",
    "build_plan", "calibrate_activations", "dequantize", "fake_quant", "fold_batchnorm", "get_profile",
    "make_calibrator", "ncnn_table_to_plan", "override_keys", "placement_for", "plan_to_ncnn_table",
    "qtable_float_layers", "quant_params", "quantize", "quantize_model", "ranges_to_tpu_table", "read_ncnn_table",
    "read_qtable", "read_tpu_calibration_table", "run_calibrators", "tpu_table_to_plan", "tpu_table_to_ranges",
    "write_ncnn_table", "write_qtable", "write_tpu_calibration_table",
]
