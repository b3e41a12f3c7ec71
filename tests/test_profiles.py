"""Profiles: each target's documented choices, overrides, and the depthwise-only override."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.errors import ConfigError
from harness.quant.calibration import build_weights
from harness.quant.profiles import PROFILES, get_profile, override_keys


def test_all_eight_profiles_exist():
    assert set(PROFILES) == {"ncnn-int8", "bm1684-int8", "bm1684x-int8", "tflite-uint8", "tflite-int8", "ort-qdq",
                             "nnie-int8", "nnie-int16"}
    for profile in PROFILES.values():
        assert profile.description and type(profile).__doc__


def test_ncnn_int8():
    p = get_profile("ncnn-int8")
    w, a = p.weight_scheme, p.activation_scheme
    assert (w.bits, w.symmetric, w.narrow_range, w.granularity, w.axis, w.rounding) == (8, True, True, "per_channel", 0, "half_away")
    assert (w.qmin, w.qmax) == (-127, 127)
    assert (a.symmetric, a.granularity, a.rounding, a.qmin, a.qmax) == (True, "per_tensor", "half_away", -127, 127)
    assert p.activation_method == "kl" and p.placement == "conv_inputs"
    assert not p.quantize_bias and p.table_format == "ncnn"


@pytest.mark.parametrize("name, chip, granularity, rules", [
    ("bm1684-int8", "bm1684", "per_tensor", "tpu-mlir"), ("bm1684x-int8", "bm1684x", "per_channel", "tpu-mlir-bm1684x")])
def test_bm1684_family(name, chip, granularity, rules):
    p = get_profile(name)
    assert p.lowering == chip and p.range_rules == rules and p.weight_scheme.granularity == granularity
    # tpu-mlir casts to int8 rounding half away from zero and saturates at -128 (not ncnn's narrow range)
    a = p.activation_scheme
    assert a.symmetric and (a.qmin, a.qmax, a.rounding) == (-128, 127, "half_away")
    assert p.activation_method == "kl" and p.placement == "tpu_mlir" and p.table_format == "tpu-mlir"


def test_lowering_is_validated_and_needs_the_tpu_mlir_placement():
    assert get_profile("bm1684-int8", lowering="none").lowering is None
    with pytest.raises(ConfigError, match="lowering"):
        get_profile("bm1684-int8", lowering="bm1688")
    with pytest.raises(ConfigError, match="tpu_mlir"):
        get_profile("bm1684-int8", placement="all_tensors")


def test_tflite_uint8():
    p = get_profile("tflite-uint8")
    for s in (p.weight_scheme, p.activation_scheme):
        assert (s.signed, s.symmetric, s.granularity, s.qmin, s.qmax) == (False, False, "per_tensor", 0, 255)
    assert p.activation_method == "minmax" and p.placement == "all_tensors" and p.quantize_bias
    assert "(q - mean_value) / std_value" in p.input_note


def test_tflite_int8():
    p = get_profile("tflite-int8")
    assert (p.weight_scheme.granularity, p.weight_scheme.qmin, p.weight_scheme.qmax) == ("per_channel", -127, 127)
    a = p.activation_scheme
    assert (a.signed, a.symmetric, a.qmin, a.qmax) == (True, False, -128, 127)
    assert p.activation_method == "minmax" and p.quantize_bias


def test_ort_qdq_matches_installed_quantize_static_defaults():
    import inspect

    from onnxruntime.quantization import QuantType, quantize_static

    defaults = {k: v.default for k, v in inspect.signature(quantize_static).parameters.items()}
    p = get_profile("ort-qdq")
    assert defaults["per_channel"] is False and p.weight_scheme.granularity == "per_tensor"
    assert defaults["reduce_range"] is False
    assert defaults["activation_type"] == (QuantType.QInt8 if p.activation_scheme.signed else QuantType.QUInt8)
    assert defaults["weight_type"] == QuantType.QInt8 and p.weight_scheme.symmetric  # WeightSymmetric default
    assert not p.activation_scheme.symmetric  # ActivationSymmetric default False
    assert p.weight_scheme.rounding == p.activation_scheme.rounding == "half_even"
    assert p.placement == "ort_qdq" and p.quantize_bias and p.activation_method == "minmax"


@pytest.mark.parametrize("name, bits", [("nnie-int8", 8), ("nnie-int16", 16)])
def test_nnie(name, bits):
    p = get_profile(name)
    for s in (p.weight_scheme, p.activation_scheme):
        assert (s.domain, s.bits, s.granularity, s.signed, s.symmetric) == ("log2", bits, "per_tensor", True, True)
    assert p.placement == "conv_inputs"


def test_nnie_high_precision_layers_use_16_bit_log():
    p = get_profile("nnie-int8", high_precision_layers=["conv2"])
    assert p.weight_scheme_for(layer="conv2", depthwise=False, axis=0).bits == 16
    assert p.activation_scheme_for("conv2").bits == 16 and p.activation_scheme_for("conv2").domain == "log2"
    assert p.activation_scheme_for("conv1").bits == 8
    with pytest.raises(ConfigError, match="high-precision"):
        get_profile("ncnn-int8", high_precision_layers=["conv2"])


def test_overrides_flat_vocabulary():
    p = get_profile("ncnn-int8").with_overrides(weight_granularity="per_tensor", activation_method="minmax",
                                                float_layers=["fc"], rounding="half_even", activation_bits=16)
    assert p.weight_scheme.granularity == "per_tensor" and p.activation_method == "minmax"
    assert p.float_layers == frozenset({"fc"})
    assert p.weight_scheme.rounding == p.activation_scheme.rounding == "half_even"
    assert p.activation_scheme.bits == 16 and p.name == "ncnn-int8"
    # the original is untouched (frozen)
    assert get_profile("ncnn-int8").weight_scheme.granularity == "per_channel"


def test_override_params_validated():
    p = get_profile("ncnn-int8", activation_method="percentile", activation_params={"percentile": 99.9})
    assert p.make_calibrator().percentile == 99.9
    with pytest.raises(ConfigError, match="unknown parameter"):
        get_profile("ncnn-int8", activation_params={"percentle": 99.9})
    with pytest.raises(ConfigError, match="calibration method"):
        get_profile("ncnn-int8", activation_method="entropyy")


def test_unknown_override_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        get_profile("ncnn-int8").with_overrides(weight_granularty="per_tensor")
    message = str(info.value)
    assert "weight_granularty" in message and "weight_granularity" in message and "depthwise_weight_granularity" in message
    assert message.count("Expected") == 1 and "Try" in message
    assert set(override_keys()) >= {"float_layers", "high_precision_layers", "activation_method", "placement"}


def test_bad_values_refused():
    with pytest.raises(ConfigError):
        get_profile("ncnn-int8", placement="everywhere")
    with pytest.raises(ConfigError):
        get_profile("ncnn-int8", weight_granularity="per_row")
    with pytest.raises(ConfigError):
        get_profile("nope")
    with pytest.raises(ConfigError):
        get_profile("ncnn-int8", float_layers="conv1")  # a string is not a list


def _depthwise_model():
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 0.1, 3.0], np.float32).reshape(4, 1, 1, 1)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 1, 1)) * scale).astype(np.float32), "pw_w"),
             numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * scale).astype(np.float32), "dw_w")]
    nodes = [helper.make_node("Conv", ["x", "pw_w"], ["a"], name="pw"),
             helper.make_node("Conv", ["a", "dw_w"], ["y"], name="dw", group=4, pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_depthwise_override_touches_only_depthwise_convs():
    model = _depthwise_model()
    per_channel = build_weights(model, get_profile("ncnn-int8"))
    dw_only = build_weights(model, get_profile("ncnn-int8", depthwise_weight_granularity="per_tensor"))
    assert per_channel["dw_w"].scheme.granularity == "per_channel" and per_channel["dw_w"].scale.shape == (4,)
    assert dw_only["dw_w"].scheme.granularity == "per_tensor" and dw_only["dw_w"].scale.shape == ()
    assert dw_only["pw_w"].scheme.granularity == "per_channel"
    np.testing.assert_array_equal(dw_only["pw_w"].scale, per_channel["pw_w"].scale)
    assert float(dw_only["dw_w"].scale) == pytest.approx(float(per_channel["dw_w"].scale.max()), rel=1e-6)
