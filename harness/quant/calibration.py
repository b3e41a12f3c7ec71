"""The calibration driver: model + profile + data -> ranges -> :class:`QuantPlan` -> QDQ model.

fp32 sessions with taps on exactly the tensors that need a range (not every tensor: each tap
costs a layout conversion in onnxruntime) stream the calibration batches (two sessions taking
turns, see :func:`run_calibrators`); each tensor has one calibrator however many edges read it.
Histogram calibrators (kl, percentile, mse) need a second pass over the same data, so the data
comes from ``batches_factory``, called once per pass, and nothing but counters and histograms is
kept between batches: memory does not grow with the number of images.

Graph inputs can be sites (``all_tensors`` placement) but are not node outputs, so they are fed to
their calibrator straight from the batch.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from harness.errors import CalibrationError, ConfigError
from harness.model.graph import node_display_name
from harness.model.graph_roles import non_activations
from harness.model.load import Model
from harness.model.runner import TapRunner
from harness.model.session import default_threads
from harness.quant.calibrate import CalibrationRange, Calibrator, make_calibrator
from harness.quant.fold import FoldedPair, fold_batchnorm
from harness.quant.lowering import lower_plan
from harness.quant.placement import Placement, compute_placement, weight_nodes
from harness.quant.plan import QuantPlan, TensorQuant
from harness.quant.profiles import Profile
from harness.quant.range_rules import range_owners
from harness.quant.scheme import QuantScheme, quant_params, weight_ranges
from harness.quant.tables import ncnn_scales_from_absmax, onnx_scale_from_ncnn

log = logging.getLogger(__name__)

Batch = np.ndarray | Mapping[str, np.ndarray]
BatchesFactory = Callable[[], Iterable[Batch]]
#: ``progress(phase, n_images)`` after every batch; phase is "range", "histogram" or "single".
Progress = Callable[[str, int], None]


# --- sites --------------------------------------------------------------------------------------
def placement_for(folded_proto: onnx.ModelProto, profile: Profile) -> Placement:
    """Sites and shared ranges of ``profile`` on the (BN-folded) model."""
    return compute_placement(folded_proto, placement=profile.placement, weight_op_types=profile.weight_op_types,
                             float_layers=profile.float_layers)


def activation_sites(folded_proto: onnx.ModelProto, profile: Profile) -> list[tuple[str, str]]:
    """``(tensor, consumer)`` activation sites in topological order (see :mod:`harness.quant.placement`)."""
    return list(placement_for(folded_proto, profile).sites)


# --- calibration ----------------------------------------------------------------------------------
def as_model(model: Model | onnx.ModelProto) -> Model:
    """Wrap an in-memory (already normalised) proto so a TapRunner can run it."""
    if isinstance(model, Model):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return Model(path=Path("<memory>"), proto=model, sha256="", original_opset=opset,
                 original_ir_version=model.ir_version)


def _tensors_of(sites: Profile | Placement | Iterable[Any], proto: onnx.ModelProto) -> list[str]:
    if isinstance(sites, Profile):
        return placement_for(proto, sites).tensors_to_calibrate()
    if isinstance(sites, Placement):
        return sites.tensors_to_calibrate()
    names: dict[str, None] = {}
    for site in sites:
        names.setdefault(site if isinstance(site, str) else site[0], None)
    # A Resize's scales or a Reshape's shape has no range worth calibrating (KL on [1, 1, 2, 2] gave
    # [1.0, 1.0015]); placements never list them, explicit sites may.
    roles = non_activations(proto)
    skipped = [n for n in names if n in roles]
    if skipped:
        log.info("not calibrating %d non-activation tensor(s), e.g. %s (%s)", len(skipped), skipped[0],
                 roles[skipped[0]])
    return [n for n in names if n not in roles]


def calibrate_activations(
    model: Model | onnx.ModelProto,
    sites: Profile | Placement | Iterable[tuple[str, str] | str],
    batches_factory: BatchesFactory,
    *,
    method: str | None = None,
    method_params: Mapping[str, Any] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict[str, CalibrationRange]:
    """Ranges of every tensor ``sites`` needs, in site order.

    ``sites`` is a profile (its placement and calibrator), a :class:`Placement`, or explicit sites /
    tensor names (then ``method`` / ``method_params`` choose the calibrator; default kl).
    """
    m = as_model(model)
    tensors = _tensors_of(sites, m.proto)
    if isinstance(sites, Profile):
        method = method or sites.activation_method
        method_params = sites.activation_params if method_params is None else method_params
    cals = {t: make_calibrator(method or "kl", **dict(method_params or {})) for t in tensors}
    return run_calibrators(m, cals, batches_factory, threads=threads, progress=progress)


def run_calibrators(
    model: Model | onnx.ModelProto,
    calibrators: Mapping[str, Calibrator],
    batches_factory: BatchesFactory,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    overlap: bool | None = None,
) -> dict[str, CalibrationRange]:
    """Drive ready-made calibrators (one per tensor) through one or two passes and compute them.

    Exposed so a sharded run can call it per shard with its own calibrators and ``merge`` them.

    ``overlap`` (default: on when ``threads`` is 2 or more): two sessions of ``threads - 1``
    onnxruntime threads each take turns, so forward passes (onnxruntime releases the GIL) run on
    one core while the calling thread bins the previous batch on the other, and when binning is
    quick (the range pass) both sessions run at once. numpy holds the GIL for most of the binning
    (``np.bincount``), so a second binning thread gains nothing: overlapping it with the forward
    passes is what keeps both cores busy. Each calibrator still sees its batches one at a time and
    in order, so results do not depend on it. Measured on MobileNetV2 (2 cores, KL, 100 images; see
    ``benchmarks/bench_calibrate.py``): 1.1x to 1.3x faster than one session of 2 threads, for
    twice the session memory (peak RSS about 400 MiB instead of 290).
    """
    m = as_model(model)
    inputs = set(m.input_names)
    taps = [t for t in calibrators if t not in inputs]
    total = threads or default_threads()
    overlap = total >= 2 if overlap is None else overlap
    runners = ([TapRunner(m, taps=taps, threads=max(1, total - 1)) for _ in range(2)] if overlap
               else [TapRunner(m, taps=taps, threads=total)])
    single = not any(c.two_pass for c in calibrators.values())
    _one_pass(runners, calibrators, batches_factory, "single" if single else "range", progress)
    second = {t: c for t, c in calibrators.items() if c.two_pass}
    if second:
        for cal in second.values():
            cal.begin_second_pass()
        _one_pass(runners, second, batches_factory, "histogram", progress)
    return {t: c.compute() for t, c in calibrators.items()}


def _one_pass(runners: list[TapRunner], cals: Mapping[str, Calibrator], factory: BatchesFactory, phase: str,
              progress: Progress | None) -> None:
    """Feed every batch's tensors to ``cals``, with one forward pass in flight per runner.

    A runner's views stay valid until its next run, so it gets its next batch only after the
    calling thread has binned the current one; batches are binned in order.
    """
    input_name = runners[0].input_names[0]
    n_batches = 0
    with ThreadPoolExecutor(max_workers=len(runners)) as pool:
        batches = iter(factory())
        in_flight: deque[tuple[Future, Batch, TapRunner]] = deque()
        for runner in runners:
            batch = next(batches, None)
            if batch is None:
                break
            in_flight.append((pool.submit(runner.run_views, batch), batch, runner))
        while in_flight:
            future, batch, runner = in_flight.popleft()
            views = future.result()
            feeds = batch if isinstance(batch, Mapping) else {input_name: batch}
            for name, cal in cals.items():
                cal.partial_fit(views[name] if name in views else feeds[name])
            n_batches += 1
            if progress is not None:
                first = next(iter(feeds.values()))
                progress(phase, int(first.shape[0]) if np.ndim(first) else 1)
            upcoming = next(batches, None)
            if upcoming is not None:
                in_flight.append((pool.submit(runner.run_views, upcoming), upcoming, runner))
    if n_batches == 0:
        raise CalibrationError(f"Got no calibration batches in the {phase} pass",
                               expected="batches_factory() to yield the same non-empty data on every call",
                               remedy="pass a factory (e.g. lambda: iter(batches)), not a one-shot generator")


# --- plan -----------------------------------------------------------------------------------------
def weight_axis(node: onnx.NodeProto, ndim: int) -> int:
    """Output-channel axis of a weight: Conv 0, ConvTranspose 1, Gemm 0 if transB else 1, MatMul last."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1


def is_depthwise(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    """A Conv with ``group == in_channels > 1`` (each filter sees one input channel)."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return node.op_type == "Conv" and group > 1 and weight.ndim >= 2 and weight.shape[1] == 1


def activation_quant(scheme: QuantScheme, rng: CalibrationRange, *, ncnn_scales: bool = False) -> TensorQuant:
    """Parameters from a range: symmetric and log2 use the threshold, asymmetric uses lo/hi."""
    if scheme.symmetric:
        scale, zp = quant_params(scheme, -rng.threshold, rng.threshold)
        if ncnn_scales:
            scale = ncnn_canonical_scale(scheme, rng.threshold, scale)
    else:
        scale, zp = quant_params(scheme, rng.lo, rng.hi)
    return TensorQuant(scheme=scheme, scale=scale, zero_point=zp)


def ncnn_canonical_scale(scheme: QuantScheme, absmax: np.ndarray | float, scale: np.ndarray) -> np.ndarray:
    """ncnn computes ``q = round(x * s)`` with the float32 ``s = 127 / absmax``; the ONNX scale
    closest to that is the float32 ``1 / s``. Plans of ncnn-table profiles store that value, so a
    plan written to a ``.table`` and read back is bit-identical (see ``plan_tables``)."""
    if scheme.domain != "uniform" or scheme.bits != 8 or not scheme.symmetric:
        return scale
    return onnx_scale_from_ncnn(ncnn_scales_from_absmax(absmax)).reshape(np.shape(scale))


def build_weights(folded_proto: onnx.ModelProto, profile: Profile) -> dict[str, TensorQuant]:
    """Weight parameters straight from the initializers (after BN folding)."""
    inits = {t.name: t for t in folded_proto.graph.initializer}
    weights: dict[str, TensorQuant] = {}
    for node in weight_nodes(folded_proto, profile.weight_op_types):
        layer = node_display_name(node)
        if layer in profile.float_layers or node.input[1] in weights:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        scheme = profile.weight_scheme_for(layer=layer, depthwise=is_depthwise(node, w), axis=weight_axis(node, w.ndim))
        lo, hi = weight_ranges(w, scheme)
        scale, zp = quant_params(scheme, lo, hi)
        if profile.table_format == "ncnn":
            scale = ncnn_canonical_scale(scheme, np.maximum(np.abs(lo), np.abs(hi)), scale)
        weights[node.input[1]] = TensorQuant(scheme=scheme, scale=scale, zero_point=zp)
    return weights


def build_plan(folded_proto: onnx.ModelProto, profile: Profile, ranges: Mapping[str, CalibrationRange]) -> QuantPlan:
    """The plan of ``profile`` on the folded model with calibrated ``ranges`` (keyed by tensor)."""
    placement = placement_for(folded_proto, profile)
    missing = [t for t in placement.tensors_to_calibrate() if t not in ranges]
    if missing:
        raise CalibrationError(f"Got no range for {len(missing)} tensor(s), e.g. {missing[:3]}",
                               expected="a range for every activation site of the profile",
                               remedy="calibrate with the same profile (placement, float layers) as the plan")
    owners = range_owners(folded_proto, profile.range_rules, frozenset(ranges))
    activations: dict[tuple[str, str], TensorQuant] = {}
    for tensor, consumer in placement.sites:
        own = placement.shared.get(tensor, tensor)
        rng = ranges[owners.get(own, own)]
        activations[(tensor, consumer)] = activation_quant(profile.activation_scheme_for(consumer), rng,
                                                           ncnn_scales=profile.table_format == "ncnn")
    plan = QuantPlan(weights=build_weights(folded_proto, profile), activations=activations,
                     quantize_bias=profile.quantize_bias, float_layers=frozenset(profile.float_layers))
    if profile.lowering is None:
        return plan
    return lower_plan(folded_proto, plan, ranges, chip=profile.lowering, range_rules=profile.range_rules)


# --- everything -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizedModel:
    """The outcome of :func:`quantize_model`; ``qdq`` is None when the simulator is unavailable."""

    profile: Profile
    folded: onnx.ModelProto = field(repr=False)
    folded_pairs: list[FoldedPair]
    placement: Placement = field(repr=False)
    ranges: dict[str, CalibrationRange] = field(repr=False)
    plan: QuantPlan = field(repr=False)
    qdq: Any = field(default=None, repr=False)  # simulate.QdqModel


def write_qdq(folded_proto: onnx.ModelProto, plan: QuantPlan, **options: Any) -> Any:
    """``simulate.write_qdq_model`` when that module exists, else None (logged)."""
    try:
        from harness.quant import simulate
    except ImportError:
        log.warning("harness.quant.simulate is not available; no QDQ model written")
        return None
    return simulate.write_qdq_model(folded_proto, plan, **options)


def quantize_model(
    model: Model | onnx.ModelProto,
    profile: Profile,
    batches_factory: BatchesFactory | None = None,
    *,
    ranges: Mapping[str, CalibrationRange] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    write_model: bool = True,
) -> QuantizedModel:
    """Fold BN, calibrate (unless ``ranges`` are given), build the plan and write the QDQ model."""
    m = as_model(model)
    folded, pairs = fold_batchnorm(m.proto)
    placement = placement_for(folded, profile)
    if ranges is None:
        if batches_factory is None:
            raise ConfigError("Got neither calibration data nor ranges", expected="batches_factory or ranges",
                              remedy="pass a batches factory, or ranges read from a table")
        folded_model = Model(path=m.path, proto=folded, sha256=m.sha256, original_opset=m.original_opset,
                             original_ir_version=m.original_ir_version)
        ranges = calibrate_activations(folded_model, placement, batches_factory, method=profile.activation_method,
                                       method_params=profile.activation_params, threads=threads, progress=progress)
    plan = build_plan(folded, profile, ranges)
    qdq = write_qdq(folded, plan) if write_model else None
    return QuantizedModel(profile=profile, folded=folded, folded_pairs=pairs, placement=placement,
                          ranges=dict(ranges), plan=plan, qdq=qdq)
