"""Plans <-> calibration tables of other toolchains (ncnn ``.table``, tpu-mlir table and qtable).

Why: a user brings the table their toolchain produced and wants the harness to simulate *exactly
those scales*; or the harness calibrates and the user deploys its table. Both directions go
through :class:`QuantPlan`, the one input of the QDQ writer, so "simulate what the table says"
holds by construction.

Exactness. ncnn scales are multiplicative float32 (``q = round(x * s)``); a plan holds ONNX scales
(``x = q * scale``). Plans of ncnn profiles store ``scale = float32(1 / s)`` (see
``calibration.ncnn_canonical_scale``), and writing picks the float32 ``s`` whose reciprocal is
that scale, so plan -> table -> plan is bit-identical. tpu-mlir rows hold Python floats written
with ``repr``, so ranges -> table -> ranges is exact too.

Layer names are node display names (``node.name`` or the first output's name): that is what
ncnn names a layer after onnx2ncnn, and what our ``float_layers`` use. Every name a table brings is
checked against the model (:class:`~harness.model.names.LayerNames`): an ncnn line or a qtable row
that names no layer is an error listing the closest names, since the toolchain would ignore it and
the layer the user meant would silently stay int8. A tpu-mlir calibration row that names no tensor
is only a warning: tpu-mlir's ImportCalibrationTable looks each tensor of the model up in the table
and never reads the other rows, and a tensor left without a row still fails ``build_plan``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from harness.errors import ConfigError, TableError
from harness.model.graph import node_display_name
from harness.model.names import LayerNames
from harness.quant.calibrate import CalibrationRange
from harness.quant.calibration import build_plan, is_depthwise, weight_axis
from harness.quant.placement import weight_nodes
from harness.quant.plan import QuantPlan, TensorQuant
from harness.quant.profiles import Profile
from harness.quant.tables import (
    NcnnTable,
    TpuCalibrationRow,
    TpuCalibrationTable,
    onnx_scale_from_ncnn,
)
from harness.quant.tpu_mlir import TopGraph

log = logging.getLogger(__name__)
_SIX_BIT_QMAX = 31.0


# --- ncnn -----------------------------------------------------------------------------------------
def ncnn_scale_for(onnx_scale: np.ndarray) -> np.ndarray:
    """The float32 ncnn scale ``s`` with ``float32(1 / s) == onnx_scale`` (1.0 -> 0: dead channel).

    ``1 / scale`` rounded to float32 is tried first, then its float32 neighbours: the reciprocal
    map is not exactly invertible in float32, and the neighbour that maps back is the one ncnn
    would have written.
    """
    scale = np.asarray(onnx_scale, dtype=np.float32).reshape(-1)
    out = np.empty_like(scale)
    for i, s in enumerate(scale):
        if s == np.float32(1.0):
            out[i] = 0.0  # dead channel / zero threshold (ncnn writes 0; 1.0 is what 0 reads back as)
            continue
        guess = np.float32(1.0 / np.float64(s))
        candidates = [guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(0)),
                      np.nextafter(np.nextafter(guess, np.float32(np.inf)), np.float32(np.inf)),
                      np.nextafter(np.nextafter(guess, np.float32(0)), np.float32(0))]
        out[i] = next((c for c in candidates if np.float32(1.0 / np.float64(c)) == s), guess)
    return out


def _is_six_bit_candidate(node: onnx.NodeProto, weight_dims: list[int]) -> bool:
    """The convolutions ncnn2table gives 31/absmax weight scales: an ncnn ``Convolution`` (``group`` 1; grouped
    and depthwise ONNX Convs become ``ConvolutionDepthWise``, which keeps 127/absmax) with a 3x3 kernel, stride 1
    and dilation 1 (its int8 winograd path). The kernel comes from the weight: ``kernel_shape`` is optional."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return (node.op_type == "Conv" and list(weight_dims[2:]) == [3, 3] and int(attrs.get("group", 1)) == 1
            and all(s == 1 for s in attrs.get("strides", [1, 1]))
            and all(d == 1 for d in attrs.get("dilations", [1, 1])))


def plan_to_ncnn_table(folded_proto: onnx.ModelProto, plan: QuantPlan, *, six_bit: bool = False) -> NcnnTable:
    """An ncnn table from a symmetric 8-bit plan, layers in topological order.

    Weight lines are keyed by the node's display name, activation lines by the consuming layer
    (the scale of its input blob). Float layers become ``#`` lines. ``six_bit`` writes ``31/absmax``
    weight scales for 3x3 stride-1 convolutions (ncnn's optional 6-bit weights; export only).
    """
    names = LayerNames(folded_proto)
    unknown = sorted(set(plan.float_layers) - set(names.nodes))
    if unknown:  # a '#name' line that names no layer would keep nothing in fp32 on the device
        raise names.unknown_error(unknown, where="the plan's float_layers", nodes_only=True,
                                  expected="node names of the model (resolve user names with LayerNames first)")
    weights: dict[str, np.ndarray] = {}
    acts: dict[str, float] = {}
    inits = {t.name: t for t in folded_proto.graph.initializer}
    for node in weight_nodes(folded_proto, frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})):
        layer = node_display_name(node)
        if layer in plan.float_layers:
            continue
        wq = plan.weights.get(node.input[1])
        if wq is not None:
            _require_ncnn_scheme(wq, f"weight {node.input[1]!r}")
            if six_bit and _is_six_bit_candidate(node, list(inits[node.input[1]].dims)):
                absmax = np.asarray(wq.scale, np.float64).reshape(-1) * 127.0
                weights[layer] = np.where(np.asarray(wq.scale).reshape(-1) == 1.0, 0.0,
                                          _SIX_BIT_QMAX / absmax).astype(np.float32)
            else:
                weights[layer] = ncnn_scale_for(wq.scale)
            if weights[layer].size == 1:  # per-tensor: ncnn still expects one scale per output channel
                w_shape = inits[node.input[1]].dims
                weights[layer] = np.full(w_shape[weight_axis(node, len(w_shape))], weights[layer][0], np.float32)
        aq = plan.activation_for(node.input[0], layer)
        if aq is not None:
            _require_ncnn_scheme(aq, f"input of {layer!r}")
            acts[layer] = float(ncnn_scale_for(aq.scale)[0])
    return NcnnTable(weight_scales=weights, activation_scales=acts, float_layers=plan.float_layers)


def _require_ncnn_scheme(tq: TensorQuant, what: str) -> None:
    s = tq.scheme
    if not (s.domain == "uniform" and s.bits == 8 and s.symmetric):
        raise ConfigError(f"Got a {s.bits}-bit {'symmetric' if s.symmetric else 'asymmetric'} {s.domain} scheme for {what}",
                          expected="symmetric 8-bit uniform schemes (ncnn tables hold only 127/absmax scales)",
                          remedy="write a .json or .cali table for this profile, or use the ncnn-int8 profile")


def ncnn_table_to_plan(folded_proto: onnx.ModelProto, table: NcnnTable, profile: Profile, *,
                       names: LayerNames | None = None, source: str = "the ncnn table") -> QuantPlan:
    """The plan that simulates exactly the table's scales with ``profile``'s schemes.

    ``#`` layers (and the profile's float layers) stay float; weight layers of the model absent
    from the table are not quantised (ncnn2int8 leaves them float too) and are logged. A table
    naming layers the model does not have is refused (it was made for another model, or a ``#``
    line is misspelt), with the closest layer names; ``source`` names the table in that message.
    """
    if not (profile.weight_scheme.symmetric and profile.activation_scheme.symmetric):
        raise ConfigError(f"Got profile {profile.name!r} with asymmetric schemes for an ncnn table",
                          expected="a symmetric profile (ncnn scales have no zero point)",
                          remedy="use the ncnn-int8 profile, or override weight_symmetric/activation_symmetric")
    nodes = weight_nodes(folded_proto, profile.weight_op_types)
    by_layer = {node_display_name(n): n for n in nodes}
    names = names or LayerNames(folded_proto)
    rows = list(dict.fromkeys([*table.weight_scales, *table.activation_scales, *sorted(table.float_layers)]))
    unknown = [row for row in rows if row not in names.nodes]
    if unknown:
        raise names.unknown_error(unknown, where=source, error=TableError, nodes_only=True,
                                  expected="layer names equal to the model's node names (or first output names, "
                                           "after BN folding); check that the table was made for this model")
    floats = frozenset(table.float_layers) | profile.float_layers
    inits = {t.name: t for t in folded_proto.graph.initializer}
    weights: dict[str, TensorQuant] = {}
    acts: dict[tuple[str, str], TensorQuant] = {}
    missing = []
    for layer, node in by_layer.items():
        if layer in floats:
            continue
        if layer not in table.weight_scales or layer not in table.activation_scales:
            missing.append(layer)
            continue
        w = onnx.numpy_helper.to_array(inits[node.input[1]])
        axis = weight_axis(node, w.ndim)
        scales = np.asarray(table.weight_scales[layer], np.float32).reshape(-1)
        scheme = profile.weight_scheme_for(layer=layer, depthwise=is_depthwise(node, w), axis=axis)
        channels = w.shape[axis]
        uniform = scales.size == 1 or bool(np.all(scales == scales[0]))
        if uniform and (scales.size == 1 or scheme.granularity == "per_tensor"):
            scheme = _replace(scheme, granularity="per_tensor", axis=0)
            scales = scales[:1]
        elif scales.size != channels:
            raise TableError(f"Weight line {layer}_param_0 has {scales.size} scales for {channels} output channels",
                             expected="one scale per output channel", remedy="regenerate the table for this model")
        else:
            scheme = _replace(scheme, granularity="per_channel", axis=axis)
        onnx_w = onnx_scale_from_ncnn(scales)
        weights[node.input[1]] = TensorQuant(scheme=scheme, scale=onnx_w if scheme.granularity == "per_channel"
                                             else onnx_w.reshape(()), zero_point=np.zeros(onnx_w.shape if
                                             scheme.granularity == "per_channel" else (), np.int32))
        a_scheme = profile.activation_scheme_for(layer)
        acts[(node.input[0], layer)] = TensorQuant(
            scheme=a_scheme, scale=onnx_scale_from_ncnn(np.float32(table.activation_scales[layer])).reshape(()),
            zero_point=np.zeros((), np.int32))
    if missing:
        log.info("ncnn table has no scales for %d layer(s); they stay float: %s", len(missing), missing[:5])
    return QuantPlan(weights=weights, activations=acts, quantize_bias=profile.quantize_bias, float_layers=floats)


def _replace(scheme, **changes):
    import dataclasses

    return dataclasses.replace(scheme, **changes)


# --- tpu-mlir -------------------------------------------------------------------------------------
def ranges_to_tpu_table(ranges: Mapping[str, CalibrationRange], *, comments: Iterable[str] = (),
                        proto: onnx.ModelProto | None = None) -> TpuCalibrationTable:
    """One ``name threshold min max`` row per tensor, in the order of ``ranges``.

    With ``proto`` (the BN-folded model the ranges belong to), rows take tpu-mlir's names
    (``<tensor>_<op type>``, see :mod:`harness.quant.tpu_mlir`), so tpu-mlir's ``model_deploy`` finds
    them; :func:`tpu_table_to_ranges` with the same model reads them back.
    """
    top = TopGraph(proto) if proto is not None else None
    rows = {(top.tpu_name(name) if top is not None else name):
            TpuCalibrationRow(threshold=float(r.threshold), min=float(r.observed_min), max=float(r.observed_max))
            for name, r in ranges.items()}
    return TpuCalibrationTable(rows=rows, comments=tuple(comments))


def tpu_table_to_ranges(table: TpuCalibrationTable, proto: onnx.ModelProto | None = None) -> dict[str, CalibrationRange]:
    """Ranges from table rows: symmetric schemes use the threshold, asymmetric ones ``[min, max]``.

    tpu-mlir records the threshold next to the observed extremes; the asymmetric interpretation
    of a row is the observed range, which is what its asymmetric mode calibrates.

    With ``proto`` (the model the table is applied to, BN-folded), rows are keyed the way tpu-mlir
    applies them (:mod:`harness.quant.tpu_mlir`): a row named ``<tensor>_<op type>`` is that ONNX tensor
    when its producer has that op type, and the output of an op tpu-mlir fused with the ReLU after it
    (Conv -> Clip) reads the activation's row, as the fused op has that one output. Rows that name no
    tensor of ``proto`` keep their own name. Without ``proto`` rows are taken as ONNX tensor names.
    """
    out = {}
    top = TopGraph(proto) if proto is not None else None
    for name, row in table.rows.items():
        key = (top.onnx_tensor(name) or name) if top is not None else name
        out[key] = CalibrationRange(method="table", lo=float(row.min), hi=float(row.max), threshold=float(row.threshold),
                                    observed_min=float(row.min), observed_max=float(row.max))
    if top is not None:
        for pre_activation, relu in top.fused_relu.items():
            if pre_activation not in out and relu.output[0] in out:
                out[pre_activation] = out[relu.output[0]]
    return out


def warn_unknown_rows(table: TpuCalibrationTable, names: LayerNames, *, source: str = "the calibration table",
                      proto: onnx.ModelProto | None = None) -> list[str]:
    """Rows (int8 and int4) that name no tensor of the model, logged as one warning; returned for callers.

    Only a warning: tpu-mlir itself ignores such rows (it looks up each tensor of the model), and a
    renamed tensor shows up as a missing row when the plan is built. Rows of the tensors BN folding
    removed (a tpu-mlir table of the unfolded model has them) are known, not unknown; with ``proto`` (the
    BN-folded model) so are tpu-mlir's own ``<tensor>_<op type>`` names, read as :func:`tpu_table_to_ranges`
    reads them."""
    top = TopGraph(proto) if proto is not None else None
    known = set(names.producer) | set(names.inputs) | set(names.folded_into)
    unknown = [row for row in dict.fromkeys([*table.rows, *table.int4_rows])
               if row not in known and (top is None or top.onnx_tensor(row) not in known)]
    if unknown:
        log.warning("%s", names.unknown_error(unknown, where=source, expected=(
            f"tensor names of {names.model}; tpu-mlir ignores rows that name no tensor, and so does the harness")))
    return unknown


def qtable_float_layers(folded_proto: onnx.ModelProto, modes: Mapping[str, str], *,
                        names: LayerNames | None = None, source: str = "the qtable") -> frozenset[str]:
    """Layers a qtable keeps in float (mode other than INT8), as node display names.

    tpu-mlir names an op by its output tensor, so a qtable row may name either; both resolve, and so do a
    BatchNormalization folded into its Conv and tpu-mlir's own name ``<tensor>_<op type>``
    (:mod:`harness.quant.tpu_mlir`). A row of any mode that names nothing is a TableError with the closest names:
    the layer it was meant for would silently stay in its default precision.
    """
    top = TopGraph(folded_proto)
    modes = {(top.onnx_tensor(name) or name): mode for name, mode in modes.items()}
    names = names or LayerNames(folded_proto)
    names.resolve(list(modes), where=source, error=TableError)
    return names.resolve([name for name, mode in modes.items() if mode != "INT8"], where=source, error=TableError)


def tpu_table_to_plan(folded_proto: onnx.ModelProto, table: TpuCalibrationTable, profile: Profile, *,
                      qtable: Mapping[str, str] | None = None, names: LayerNames | None = None) -> QuantPlan:
    """The plan of ``profile`` with the table's ranges; qtable F32/F16/BF16 rows become float layers."""
    names = names or LayerNames(folded_proto)
    warn_unknown_rows(table, names, proto=folded_proto)
    if qtable:
        floats = qtable_float_layers(folded_proto, qtable, names=names)
        profile = profile.with_overrides(float_layers=profile.float_layers | floats)
    return build_plan(folded_proto, profile, tpu_table_to_ranges(table, folded_proto))
