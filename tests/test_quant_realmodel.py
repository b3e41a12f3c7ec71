"""MobileNetV2 acceptance: per-channel vs per-tensor depthwise weights, and parity with
onnxruntime's quantize_static (QDQ, MinMax) on the same images.

Calibration data: the 4 images of ../shared/realmodels/mobilenet_v2 plus flips and crops (48 in
all), preprocessed as its README says. Metric: cosine of the logits to fp32, averaged over the 4
original images.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from harness.data import PreprocessSpec, list_images, preprocess, read_image
from harness.model import load_model, make_session
from harness.quant import build_plan, calibrate_activations, fake_quant, fold_batchnorm, get_profile, quantize_model
from harness.quant.simulate import MODE_OPTIMIZATION, write_qdq_model

pytestmark = pytest.mark.realmodel

SPEC = PreprocessSpec(size=(224, 224), channel_order="rgb", resize="short_side", short_side=256,
                      mean=(0.485 * 255, 0.456 * 255, 0.406 * 255), std=(0.229 * 255, 0.224 * 255, 0.225 * 255))
_CROPS = [(0.0, 0.0, 1.0), (0.0, 0.0, 0.8), (1.0, 1.0, 0.8), (0.0, 1.0, 0.7), (1.0, 0.0, 0.7), (0.5, 0.5, 0.6)]


@pytest.fixture(scope="module")
def mnv2(realmodels_dir):
    folder = realmodels_dir / "mobilenet_v2"
    raw = [read_image(p) for p in list_images(folder / "images")]
    probes = [preprocess(r, SPEC)[0][None] for r in raw]
    augmented = []
    for image in raw:
        h, w = image.shape[:2]
        for flip in (False, True):
            img = np.ascontiguousarray(image[:, ::-1]) if flip else image
            for y0, x0, f in _CROPS:
                ch, cw = int(h * f), int(w * f)
                y, x = int((h - ch) * y0), int((w - cw) * x0)
                augmented.append(preprocess(np.ascontiguousarray(img[y:y + ch, x:x + cw]), SPEC)[0][None])
    model = load_model(folder / "mobilenet_v2.onnx")
    fp32 = make_session(model.serialized(), threads=2)
    reference = [fp32.run(None, {"input": x})[0] for x in probes]
    return model, probes, augmented, reference


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _mean_cosine(proto: onnx.ModelProto, probes, reference) -> float:
    session = make_session(proto.SerializeToString(), threads=2, optimization=MODE_OPTIMIZATION["simulate"])
    return float(np.mean([_cosine(session.run(None, {"input": x})[0], r) for x, r in zip(probes, reference)]))


def test_per_channel_keeps_cosine_per_tensor_depthwise_falls(mnv2):
    model, probes, augmented, reference = mnv2
    folded, _ = fold_batchnorm(model.proto)
    per_channel = get_profile("ncnn-int8")
    ranges = calibrate_activations(folded, per_channel, lambda: iter(augmented), threads=2)  # fp32 ranges: shared
    dw_per_tensor = per_channel.with_overrides(depthwise_weight_granularity="per_tensor")
    cos_pc = _mean_cosine(write_qdq_model(folded, build_plan(folded, per_channel, ranges)).proto, probes, reference)
    cos_pt = _mean_cosine(write_qdq_model(folded, build_plan(folded, dw_per_tensor, ranges)).proto, probes, reference)
    numbers = f"logits cosine to fp32 (mean of 4 images): per-channel {cos_pc:.4f}, per-tensor depthwise {cos_pt:.4f}"
    print(numbers)
    assert cos_pc >= 0.97, numbers
    assert cos_pt < 0.97 and cos_pt < cos_pc - 0.005, numbers


def test_minmax_qdq_matches_onnxruntime_quantize_static(mnv2, tmp_path):
    """Same MinMax ranges + same scheme -> the same model as quantize_static (QDQ, MinMax).

    onnxruntime calibrates an *optimised* session (Conv+Clip fused), so its min/max differ from
    ours in the last float bits; a one-ulp scale difference flips a rounding tie, and MobileNetV2
    amplifies one flipped code to tens of codes by the last layers. So: (1) our ranges equal its
    ranges to float rounding; (2) with its ranges, our plan + QDQ writer reproduce its model within
    one code on every quantised tensor and one step on the logits.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    from harness.quant import CalibrationRange

    model, probes, _, _ = mnv2
    data = probes + [np.ascontiguousarray(x[..., ::-1]) for x in probes]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(model.proto, src)
    cache = tmp_path / "ranges.json"  # the exact ranges quantize_static used
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                    calibration_cache_path=cache)
    theirs = onnx.load(dst)
    their_ranges = {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
                    for name, td in load_tensors_data(cache).data.items()}

    profile = get_profile("ort-qdq")
    own = quantize_model(model, profile, lambda: iter(data), threads=2)
    worst_range = max(abs(own.ranges[t].lo - their_ranges[t][0]) + abs(own.ranges[t].hi - their_ranges[t][1])
                      for t in own.ranges) / max(max(abs(r.lo), abs(r.hi)) for r in own.ranges.values())
    assert worst_range < 1e-5

    ranges = {t: CalibrationRange("minmax", lo, hi, max(-lo, hi), lo, hi) for t, (lo, hi) in their_ranges.items()}
    plan = build_plan(own.folded, profile, ranges)
    ours = write_qdq_model(own.folded, plan)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in theirs.graph.initializer}
    their_q = {n.input[0]: n.output[0] for n in theirs.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    # the same tensors are quantised (their graph output gets a renamed input)
    assert {name.replace("_QuantizeLinear_Input", "") for name in their_q} == {t for t, _ in plan.activations}
    pre_logits = "logits_QuantizeLinear_Input"
    logits_dq = next(n for n in theirs.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "logits")
    step = float(inits[logits_dq.input[1]])

    shared = [t for t in their_q if t in ours.code_tensors]
    a = _tapped(theirs, [their_q[t] for t in shared] + [pre_logits])
    b = _tapped(ours.proto, [ours.code_tensors[t] for t in shared])
    own_session = make_session(own.qdq.proto.SerializeToString(), threads=2, optimization=MODE_OPTIMIZATION["simulate"])
    logits_tq = plan.activations[("logits", "*")]
    worst_codes, worst_steps, worst_final, own_steps = 0, 0.0, 0.0, 0.0
    for x in probes:
        ra, rb = a.run(None, {"input": x}), b.run(None, {"input": x})
        for ca, cb in zip(ra[1:1 + len(shared)], rb[1:]):
            worst_codes = max(worst_codes, int(np.abs(ca.astype(np.int32) - cb.astype(np.int32)).max()))
        worst_steps = max(worst_steps, float(np.abs(ra[-1] - rb[0]).max()) / step)
        # our graph outputs stay float; quantising them as onnxruntime does gives its final output
        final = fake_quant(rb[0], logits_tq.scheme, logits_tq.scale, logits_tq.zero_point)
        worst_final = max(worst_final, float(np.abs(ra[0] - final).max()) / step)
        own_steps = max(own_steps, float(np.abs(ra[-1] - own_session.run(None, {"input": x})[0]).max()) / step)
    numbers = (f"ranges agree to {worst_range:.1e} relative; with onnxruntime's ranges: max code difference over "
               f"{len(shared)} quantised tensors {worst_codes}, logits before output quantisation {worst_steps:.3f} "
               f"steps, final logits {worst_final:.3f} steps; with our own ranges the logits differ by "
               f"{own_steps:.2f} steps")
    print(numbers)
    assert worst_codes <= 1 and worst_steps <= 1.0 and worst_final <= 1.0, numbers


def _tapped(proto: onnx.ModelProto, names: list[str]):
    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    for name in names:
        tapped.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return make_session(tapped.SerializeToString(), threads=2, optimization=MODE_OPTIMIZATION["simulate"])


@pytest.mark.parametrize("profile", ["ncnn-int8", "ort-qdq"])
def test_simulate_session_is_bit_identical_to_the_written_model(mnv2, profile):
    """mode_session('simulate') folds the constant weight DequantizeLinear nodes (the speed-up
    measured by benchmarks/bench_calibrate.py); it must compute exactly what the written QDQ model
    computes with graph optimisations off, tapped dequantised activations included."""
    from harness.model import TapRunner
    from harness.quant.calibration import as_model
    from harness.quant.simulate import mode_runner, mode_session

    model, probes, augmented, _ = mnv2
    qm = quantize_model(model, get_profile(profile), lambda: iter(augmented[:8]), threads=2)
    written = make_session(qm.qdq.proto.SerializeToString(), threads=2, optimization=MODE_OPTIMIZATION["simulate"])
    simulate = mode_session(qm.qdq, "simulate", threads=2)
    taps = sorted(qm.qdq.dequantized_tensors.values())[::7]
    want_runner = TapRunner(as_model(qm.qdq.proto), taps=taps, threads=2, optimization="disabled")
    got_runner = mode_runner(qm.qdq, "simulate", taps=taps, threads=2)
    for x in probes:
        assert simulate.run(None, {"input": x})[0].tobytes() == written.run(None, {"input": x})[0].tobytes()
        want, got = want_runner.run(x), got_runner.run(x)
        assert all(got[name].tobytes() == want[name].tobytes() for name in want)
