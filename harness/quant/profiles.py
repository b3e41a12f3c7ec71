"""Target profiles: what each deployment toolchain quantises, how, and where.

A profile is the single place where a toolchain's conventions live (scheme of weights and
activations, calibration method, where activations are quantised, bias handling, table format),
so a suite says ``profile = "ncnn-int8"`` and overrides only what its deployment does differently.
Facts cited below come from ``DESIGN.md`` ("Facts to build on") unless marked as our choice.

Placement vocabulary (``Profile.placement``)
    ``conv_inputs``: only the data input of each layer with quantised weights (Conv, Gemm, MatMul
    with an initializer weight), per consumer edge. That is ncnn's model: the ``.table`` holds one
    activation scale per *layer*, the scale of that layer's input blob, and the same blob stays
    float where an Add or Concat reads it. NNIE compiles compute layers the same way.
    ``all_tensors``: every float activation, the model input included, quantised once after its
    producer (``*`` consumer): tpu-mlir's calibration table has a row per tensor, TFLite stores a
    quantised tensor per edge of the flatbuffer.
    ``tpu_mlir``: ``all_tensors`` of tpu-mlir's fused top graph: not the output of an op that took the
    ReLU after it into itself (Conv -> ReLU6 has one output, the activation's), nor the middle tensor of
    two Convs it merged (see :mod:`harness.quant.tpu_mlir`). Its calibration table has exactly these rows.
    ``ort_qdq``: onnxruntime's QDQ quantizer rules (see :mod:`harness.quant.placement`).

Override vocabulary (``Profile.with_overrides``), flat so a TOML table can hold it:
    any field name; ``weight_<f>`` / ``activation_<f>`` for a field ``f`` of the weight /
    activation :class:`QuantScheme` (``weight_granularity = "per_tensor"``, ``activation_bits``);
    ``rounding`` for both schemes at once; ``depthwise_weight_granularity`` for depthwise
    convolutions only (``group == in_channels > 1``; ``"per_tensor"`` there is the classic
    MobileNet accuracy loss); ``activation_method`` and ``activation_params`` for the calibrator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from harness.errors import ConfigError
from harness.quant.calibrate import METHODS, make_calibrator
from harness.quant.lowering import LOWERINGS
from harness.quant.range_rules import RANGE_RULES
from harness.quant.scheme import QuantScheme

Placement = Literal["conv_inputs", "all_tensors", "tpu_mlir", "ort_qdq"]
TableFormat = Literal["ncnn", "tpu-mlir"] | None
PLACEMENTS: tuple[str, ...] = ("conv_inputs", "all_tensors", "tpu_mlir", "ort_qdq")
TABLE_FORMATS: tuple[str | None, ...] = ("ncnn", "tpu-mlir", None)
WEIGHT_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Fields that name layers of the model: checked against it by :meth:`Profile.with_layer_names`.
LAYER_FIELDS: tuple[str, ...] = ("float_layers", "high_precision_layers")


@dataclass(frozen=True, kw_only=True)
class Profile:
    """One target's quantisation conventions. Build variants with :meth:`with_overrides`.

    ``weight_op_types``: op types whose initializer weight is quantised (MatMul only when one
    input is an initializer). ``depthwise_weight_granularity``: ``None`` follows
    ``weight_scheme``; otherwise depthwise Conv weights use that granularity.
    ``high_precision_layers`` use ``high_precision_scheme`` for their weights and input
    activations (NNIE ``_hp``). ``float_layers`` stay fp32 (ncnn ``#`` lines, tpu-mlir qtable F32).
    ``range_rules``: which tensors the target makes share a range after calibration ("tpu-mlir":
    Reshape/Permute/Relu/MaxPool... outputs use their input's, see :mod:`harness.quant.range_rules`);
    the table still holds every tensor's own range, as the toolchain's does.
    ``lowering``: the chip whose integer arithmetic replaces the fake-quant of the ops it lowers
    ("bm1684", "bm1684x": :mod:`harness.quant.lowering`), or None.
    ``input_note`` documents how the runtime interprets a quantised model input.
    """

    name: str
    description: str
    weight_scheme: QuantScheme
    activation_scheme: QuantScheme
    activation_method: str = "kl"
    activation_params: Mapping[str, Any] = field(default_factory=dict)
    placement: Placement = "conv_inputs"
    weight_op_types: frozenset[str] = WEIGHT_OP_TYPES
    depthwise_weight_granularity: Literal["per_tensor", "per_channel"] | None = None
    quantize_bias: bool = False
    high_precision_layers: frozenset[str] = frozenset()
    high_precision_scheme: QuantScheme | None = None
    float_layers: frozenset[str] = frozenset()
    table_format: TableFormat = None
    range_rules: str = "none"
    lowering: str | None = None
    input_note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "activation_params", MappingProxyType(dict(self.activation_params)))
        for name in ("weight_op_types", "high_precision_layers", "float_layers"):
            object.__setattr__(self, name, frozenset(_str_list(name, getattr(self, name))))
        unknown_ops = sorted(self.weight_op_types - WEIGHT_OP_TYPES)
        if unknown_ops:
            raise ConfigError(f"Got weight_op_types {unknown_ops}", expected=f"a subset of {sorted(WEIGHT_OP_TYPES)}",
                              remedy="list only op types whose weights the core can quantise")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"Got placement={self.placement!r}", expected=f"one of {', '.join(PLACEMENTS)}",
                              remedy="use conv_inputs (ncnn, NNIE), tpu_mlir (Sophon), all_tensors (TFLite) or ort_qdq")
        if self.table_format not in TABLE_FORMATS:
            raise ConfigError(f"Got table_format={self.table_format!r}", expected="'ncnn', 'tpu-mlir' or none",
                              remedy="leave it unset for profiles without a table")
        if self.range_rules not in RANGE_RULES:
            raise ConfigError(f"Got range_rules={self.range_rules!r}", expected=f"one of {', '.join(RANGE_RULES)}",
                              remedy="use 'tpu-mlir' for Sophon's propagation rules, or 'none' for a range per tensor")
        if self.lowering == "none":  # a suite file has no null
            object.__setattr__(self, "lowering", None)
        if self.lowering not in LOWERINGS:
            raise ConfigError(f"Got lowering={self.lowering!r}", expected="one of 'none', " + ", ".join(repr(c) for c in LOWERINGS if c),
                              remedy="use 'bm1684' or 'bm1684x' (Sophon, with the tpu_mlir placement), or leave it unset")
        if self.lowering is not None and self.placement != "tpu_mlir":
            raise ConfigError(f"Got lowering={self.lowering!r} with placement={self.placement!r}",
                              expected="placement = 'tpu_mlir' (the lowering reads tpu-mlir's fused graph)",
                              remedy="set placement = 'tpu_mlir', or lowering = 'none' for plain fake-quant")
        if self.depthwise_weight_granularity not in (None, "per_tensor", "per_channel"):
            raise ConfigError(f"Got depthwise_weight_granularity={self.depthwise_weight_granularity!r}",
                              expected="'per_tensor', 'per_channel' or unset", remedy="use one of those")
        for name in ("weight_scheme", "activation_scheme"):
            if not isinstance(getattr(self, name), QuantScheme):
                raise ConfigError(f"Got {name}={getattr(self, name)!r}", expected="a QuantScheme",
                                  remedy=f"override fields with {name.split('_')[0]}_<field> keys instead")
        if self.activation_scheme.granularity != "per_tensor":
            raise ConfigError("Got per-channel activations", expected="per-tensor activation schemes",
                              remedy="set activation_granularity = 'per_tensor' (no target here uses per-channel activations)")
        if self.high_precision_layers and self.high_precision_scheme is None:
            raise ConfigError(f"Got high_precision_layers for profile {self.name!r}, which has no high_precision_scheme",
                              expected="high-precision layers only on profiles that define a 16-bit scheme (nnie-int8)",
                              remedy="use nnie-int8, or set float_layers to keep the layers in fp32 instead")
        make_calibrator(self.activation_method, **dict(self.activation_params))  # validates method and params

    # --- derived --------------------------------------------------------------------------------
    def make_calibrator(self):
        """A fresh activation calibrator with this profile's method and parameters."""
        return make_calibrator(self.activation_method, **dict(self.activation_params))

    def weight_scheme_for(self, *, layer: str, depthwise: bool, axis: int) -> QuantScheme:
        """The weight scheme of one layer: high precision, depthwise granularity, channel axis."""
        scheme = self.weight_scheme
        if layer in self.high_precision_layers and self.high_precision_scheme is not None:
            scheme = self.high_precision_scheme
        granularity = scheme.granularity
        if depthwise and self.depthwise_weight_granularity is not None and scheme.domain == "uniform":
            granularity = self.depthwise_weight_granularity
        return dataclasses.replace(scheme, granularity=granularity, axis=axis if granularity == "per_channel" else 0)

    def activation_scheme_for(self, consumer: str) -> QuantScheme:
        """The activation scheme an edge into ``consumer`` uses (high precision for ``_hp`` layers)."""
        if consumer in self.high_precision_layers and self.high_precision_scheme is not None:
            return self.high_precision_scheme
        return self.activation_scheme

    def with_layer_names(self, resolve: Callable[[str, list[str]], frozenset[str]]) -> "Profile":
        """A copy whose :data:`LAYER_FIELDS` hold node names of the model: ``resolve(field, names)`` maps the
        names a user gave (node, tensor or folded-BN names) to nodes, or raises naming the unknown ones.
        Done once the model is known (names cannot be checked when a suite file is read)."""
        return dataclasses.replace(self, **{f: resolve(f, sorted(getattr(self, f))) for f in LAYER_FIELDS})

    # --- overrides ------------------------------------------------------------------------------
    def with_overrides(self, **overrides: Any) -> "Profile":
        """A copy with ``overrides`` applied (see the module docstring for the vocabulary).

        Unknown keys raise ConfigError listing every valid key, so a typo in a suite file never
        silently falls back to the profile default.
        """
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        weight: dict[str, Any] = {}
        activation: dict[str, Any] = {}
        scheme_fields = {f.name for f in dataclasses.fields(QuantScheme)}
        unknown = []
        for key, value in overrides.items():
            if key in ("weight_scheme", "activation_scheme", "high_precision_scheme") and isinstance(value, Mapping):
                value = dataclasses.replace(fields[key] or QuantScheme(), **dict(value))
            if key in fields and key != "name":
                fields[key] = value
            elif key == "rounding":
                weight["rounding"] = activation["rounding"] = value
            elif key.startswith("weight_") and key[len("weight_"):] in scheme_fields:
                weight[key[len("weight_"):]] = value
            elif key.startswith("activation_") and key[len("activation_"):] in scheme_fields:
                activation[key[len("activation_"):]] = value
            else:
                unknown.append(key)
        if unknown:
            raise ConfigError(f"Got unknown profile override(s) {', '.join(sorted(unknown))}",
                              expected=f"keys among: {', '.join(override_keys())}",
                              remedy="fix the key in the suite's [quant] table")
        if weight:
            fields["weight_scheme"] = dataclasses.replace(fields["weight_scheme"], **weight)
        if activation:
            fields["activation_scheme"] = dataclasses.replace(fields["activation_scheme"], **activation)
        if "rounding" in overrides and fields["high_precision_scheme"] is not None:
            fields["high_precision_scheme"] = dataclasses.replace(fields["high_precision_scheme"],
                                                                  rounding=overrides["rounding"])
        return Profile(**fields)


def override_keys() -> list[str]:
    """Every key :meth:`Profile.with_overrides` accepts, sorted."""
    scheme = [f.name for f in dataclasses.fields(QuantScheme)]
    keys = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    keys |= {f"weight_{s}" for s in scheme} | {f"activation_{s}" for s in scheme} | {"rounding"}
    return sorted(keys)


def _str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"Got {name}={value!r}", expected="a list of names", remedy=f'write {name} = ["a", "b"]')
    return [str(v) for v in value]


# --- the profiles ---------------------------------------------------------------------------------
_SYM8 = QuantScheme(bits=8, signed=True, symmetric=True, narrow_range=True)


def _ncnn() -> Profile:
    """ncnn int8 (ncnn2table + ncnn2int8).

    Facts: weights symmetric per output channel, ``s = 127 / absmax`` (narrow [-127, 127]);
    activations symmetric per tensor, KL threshold (2048 bins, 128 levels, ``(i + 0.5) * absmax /
    2048``), stored as ``127 / threshold``; ncnn rounds half away from zero; the table keys an
    activation scale by the layer that reads it, so placement is per conv input edge. Biases stay
    float (ncnn dequantises the int32 accumulator and adds the float bias). Only Convolution,
    ConvolutionDepthWise and InnerProduct run int8 in ncnn, hence no ConvTranspose here.
    """
    return Profile(
        name="ncnn-int8", description="ncnn: per-channel symmetric weights, KL per-tensor conv inputs, half-away",
        weight_scheme=dataclasses.replace(_SYM8, granularity="per_channel", axis=0, rounding="half_away"),
        activation_scheme=dataclasses.replace(_SYM8, rounding="half_away"),
        activation_method="kl", placement="conv_inputs",
        weight_op_types=frozenset({"Conv", "Gemm", "MatMul"}), quantize_bias=False, table_format="ncnn")


def _bm1684(chip: str) -> Profile:
    """Sophon BM1684 / BM1684X through tpu-mlir (run_calibration + model_deploy --quantize INT8, symmetric).

    Facts (tpu-mlir 1.30's source and its own MobileNetV2 graphs, see :mod:`harness.quant.bm1684`): the
    calibration table has a row ``name threshold min max`` per tensor of tpu-mlir's fused graph, so those
    tensors are quantised after their producer (``tpu_mlir`` placement; thresholds from KL); a tensor whose
    minimum is >= 0 is uint8 ``th / 255``, others int8 ``th / 127`` over [-128, 127]; value-moving ops share
    ranges (``range_rules``; a Transpose that kept its own threshold clipped UltraFace's box regressions);
    the input is cast to int8 rounding half away from zero. Conv, Gemm, Add and average pools run in
    tpu-mlir's integer arithmetic (``lowering``): on BM1684 one power-of-two right shift per layer (the
    weights share one scale, ``OnlyShift``), int16 bias, 8-bit multipliers on an Add's inputs; on BM1684X a
    32-bit multiplier and shift per output channel, weights ``max|W_c| / 127``, int32 bias. Requantisation
    rounds half up; ReLU6 convolutions have no upper clip (the output range is the clamp).
    ``weight_scheme`` applies only to weight layers the lowering does not take (e.g. ConvTranspose).
    """
    x = chip == "bm1684x"
    weights = dataclasses.replace(_SYM8, narrow_range=False, rounding="half_away", granularity="per_channel" if x
                                  else "per_tensor")
    return Profile(
        name=f"{chip}-int8",
        description=("Sophon BM1684X/tpu-mlir: per-channel multiplier+shift, int32 bias, uint8 after ReLU" if x else
                     "Sophon BM1684/tpu-mlir: one power-of-two shift per layer, int16 bias, uint8 after ReLU"),
        weight_scheme=weights,
        activation_scheme=dataclasses.replace(_SYM8, narrow_range=False, rounding="half_away"),
        activation_method="kl", placement="tpu_mlir", quantize_bias=True, table_format="tpu-mlir",
        range_rules="tpu-mlir-bm1684x" if x else "tpu-mlir", lowering=chip)


_TFLITE_INPUT = ("TFLite uint8/int8 input: real = (q - mean_value) / std_value; float [0,1] is mean 0, std 255; "
                 "[-1,1] is mean 127.5, std 127.5. Feed uint8 pixels with preprocess dtype='uint8' and the same mean/std.")


def _tflite_uint8() -> Profile:
    """TFLite legacy ``QUANTIZED_UINT8`` (TOCO with ``mean_values``/``std_dev_values``).

    Facts: asymmetric uint8 [0, 255] per tensor for weights and activations, zero point from the
    range; every tensor of the flatbuffer is quantised (placement ``all_tensors``); biases int32
    with scale ``s_in * s_w``; the model input is read as ``real = (q - mean) / std``
    (``input_note``). Ranges are min/max (the converter's fake-quant ranges). Rounding half away
    from zero: TFLite's ``TfLiteRound`` is ``std::round`` (our reading of its source).
    """
    u8 = QuantScheme(bits=8, signed=False, symmetric=False, narrow_range=False, rounding="half_away")
    return Profile(
        name="tflite-uint8", description="TFLite QUANTIZED_UINT8: asymmetric uint8 per-tensor, minmax, all tensors",
        weight_scheme=u8, activation_scheme=u8, activation_method="minmax", placement="all_tensors",
        quantize_bias=True, input_note=_TFLITE_INPUT)


def _tflite_int8() -> Profile:
    """TFLite full-integer int8 (post-training quantisation, TF 2.x converter).

    Facts: weights symmetric int8 per output channel in [-127, 127]; activations asymmetric int8
    [-128, 127] per tensor; min/max ranges; int32 biases; every tensor quantised. Rounding half
    away from zero as for uint8.
    """
    return Profile(
        name="tflite-int8", description="TFLite int8: per-channel symmetric weights, asymmetric int8 activations, minmax",
        weight_scheme=dataclasses.replace(_SYM8, granularity="per_channel", axis=0, rounding="half_away"),
        activation_scheme=QuantScheme(bits=8, signed=True, symmetric=False, narrow_range=False, rounding="half_away"),
        activation_method="minmax", placement="all_tensors", quantize_bias=True, input_note=_TFLITE_INPUT)


def _ort_qdq() -> Profile:
    """onnxruntime ``quantize_static`` defaults (QDQ format), as read from the installed 1.32 source.

    ``quantize_static(activation_type=QInt8, weight_type=QInt8, per_channel=False,
    reduce_range=False, calibrate_method=MinMax)``; ``WeightSymmetric`` defaults to True for signed
    weight types (narrow [-127, 127], ``ONNX_INT_TYPE_SYMMETRIC_RANGE``), ``ActivationSymmetric``
    to False, so activations are asymmetric int8 [-128, 127] (older releases defaulted to QUInt8:
    set ``activation_signed = false`` for those). ``QuantizeBias`` True: int32 with
    ``s_in * s_w``. QuantizeLinear rounds half to even; weights are quantised with a float32
    ``w / s`` (``quantize_nparray``), hence ``float32_division``. Placement follows its QDQ registry.
    """
    return Profile(
        name="ort-qdq", description="onnxruntime quantize_static defaults: QDQ, int8 asym activations, int8 sym per-tensor weights",
        weight_scheme=QuantScheme(bits=8, signed=True, symmetric=True, narrow_range=True, rounding="half_even",
                                  float32_division=True),
        activation_scheme=QuantScheme(bits=8, signed=True, symmetric=False, narrow_range=False, rounding="half_even",
                                      float32_division=True),
        activation_method="minmax", placement="ort_qdq", quantize_bias=True)


def _nnie(bits: int) -> Profile:
    """HiSilicon NNIE (nnie_mapper ``compile_mode`` int8 / int16 / per-layer ``_hp``).

    Facts: weights and activations use a log-domain sign-magnitude code per layer (per tensor):
    8-bit has 16 levels per octave, ``z = round(16 * log2(c)) - 127``; 16-bit 2048 levels per
    octave. Our choices: placement ``conv_inputs`` (NNIE quantises the data input of its compute
    layers like ncnn; Eltwise/Concat run on dequantised data); the clip ``c`` is the observed
    |x| maximum (min/max), because a log grid keeps relative precision down to 2^-8 of ``c`` and
    clipping outliers buys little; rounding half away from zero; biases float (not quantised by the
    log code). ``high_precision_layers`` lists layers compiled as ``_hp`` (16-bit log code).
    """
    log8 = QuantScheme(bits=8, signed=True, symmetric=True, narrow_range=True, domain="log2", rounding="half_away")
    log16 = dataclasses.replace(log8, bits=16)
    main = log8 if bits == 8 else log16
    return Profile(
        name=f"nnie-int{bits}", description=f"HiSilicon NNIE {bits}-bit log-domain, per layer, conv inputs",
        weight_scheme=main, activation_scheme=main, activation_method="minmax", placement="conv_inputs",
        weight_op_types=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"}), quantize_bias=False,
        high_precision_scheme=log16 if bits == 8 else None)


PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (
    _ncnn(), _bm1684("bm1684"), _bm1684("bm1684x"), _tflite_uint8(), _tflite_int8(), _ort_qdq(), _nnie(8), _nnie(16))})


def get_profile(name: str | Profile, **overrides: Any) -> Profile:
    """The named profile, with optional overrides; a Profile passes through (overrides applied)."""
    if isinstance(name, Profile):
        profile = name
    else:
        profile = PROFILES.get(str(name))
        if profile is None:
            raise ConfigError(f"Got profile {name!r}", expected=f"one of {', '.join(PROFILES)}",
                              remedy="pick a profile listed above, then override fields in the suite")
    return profile.with_overrides(**overrides) if overrides else profile


__all__ = ["LAYER_FIELDS", "PLACEMENTS", "PROFILES", "Placement", "Profile", "get_profile", "override_keys", "METHODS"]
