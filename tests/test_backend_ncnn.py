"""The backend registry and the ncnn backend: export facts, runtime traps, mapping, fidelity against the simulation.

Fast tests use tiny models built here (pnnx and ncnn run in well under a second on them); the real-model
tests (MobileNetV2, UltraFace RFB-320, RetinaFace's ncnn files) are marked ``realmodel``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.backends import backend_names, get_backend, register_backend
from harness.backends.base import Backend
from harness.backends.compare import compare_backend
from harness.backends.fidelity import FidelityAccumulator, FidelitySummary, plan_steps
from harness.backends.ncnn.backend import NcnnBackend, load_ncnn_model
from harness.backends.ncnn.export import six_bit_layers
from harness.backends.ncnn.param import layer_spans, parse_param, read_param
from harness.backends.ncnn.run import NcnnOptions, NcnnRunner
from harness.backends.simulate import SimulateBackend
from harness.errors import ConfigError, ModelFormatError
from harness.model.load import normalise_model
from harness.quant import get_profile, quantize_model
from harness.quant.tables import NcnnTable, write_ncnn_table

pytestmark = pytest.mark.skipif(NcnnBackend.available() is not None, reason=f"ncnn backend: {NcnnBackend.available()}")
PROFILE = get_profile("ncnn-int8")


# --- tiny models ------------------------------------------------------------------------------------
def _conv(name, x, out, w, b, **attrs):
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], name=name, **attrs), [
        numpy_helper.from_array(w.astype(np.float32), f"{name}_w"), numpy_helper.from_array(b.astype(np.float32), f"{name}_b")]


def _model(nodes_inits, outputs, shape=(1, 3, 8, 8)) -> onnx.ModelProto:
    nodes = [item[0] for item in nodes_inits]
    inits = [t for item in nodes_inits for t in item[1]]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return normalise_model(model)[0]


def conv_relu_conv(seed: int = 0) -> onnx.ModelProto:
    """input -> conv1 (3x3, 8) -> Relu -> conv2 (1x1, 4) -> out."""
    r = np.random.default_rng(seed)
    return _model([_conv("conv1", "input", "c1", r.standard_normal((8, 3, 3, 3)), r.standard_normal(8), pads=[1] * 4),
                   (helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), []),
                   _conv("conv2", "r1", "out", r.standard_normal((4, 8, 1, 1)), r.standard_normal(4))], ["out"])


def branching(seed: int = 0, *, add_reads_relu: bool = False) -> onnx.ModelProto:
    """conv1 -> Relu -> {conv2 (1x1), dw (3x3 depthwise) -> Relu -> conv4 (1x1)} -> Add -> out.

    ``add_reads_relu``: the Add reads the Relu output instead of conv2's (a Split reader that is no conv).
    """
    r = np.random.default_rng(seed)
    items = [_conv("conv1", "input", "c1", r.standard_normal((8, 3, 3, 3)), r.standard_normal(8), pads=[1] * 4),
             (helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), []),
             _conv("conv2", "r1", "a", r.standard_normal((8, 8, 1, 1)), r.standard_normal(8)),
             _conv("dw", "r1", "d", r.standard_normal((8, 1, 3, 3)), r.standard_normal(8), pads=[1] * 4, group=8),
             (helper.make_node("Relu", ["d"], ["rd"], name="relu2"), []),
             _conv("conv4", "rd", "e", r.standard_normal((8, 8, 1, 1)), r.standard_normal(8)),
             (helper.make_node("Add", ["r1" if add_reads_relu else "a", "e"], ["out"], name="add"), [])]
    outputs = ["out", "a"] if add_reads_relu else ["out"]
    return _model(items, outputs)


def _quantized(model: onnx.ModelProto, seed: int = 1):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    batches = [np.random.default_rng(seed + i).standard_normal(shape).astype(np.float32) for i in range(4)]
    qm = quantize_model(model, PROFILE, lambda: iter(batches))
    return qm, batches[0]


@pytest.fixture
def tiny(tmp_path):
    qm, x = _quantized(conv_relu_conv())
    backend = NcnnBackend()
    backend.prepare(qm.folded, qm.plan, PROFILE, work_dir=tmp_path)
    return qm, x, backend, tmp_path


# --- registry ---------------------------------------------------------------------------------------
def test_registry_names_backends_and_refuses_unknown_ones():
    assert get_backend("ncnn") is NcnnBackend and get_backend("simulate") is SimulateBackend
    with pytest.raises(ConfigError) as info:
        get_backend("tensorrt")
    assert "Got backend 'tensorrt'" in str(info.value) and "ncnn, simulate" in str(info.value)
    assert {"ncnn", "simulate"} <= set(backend_names())


def test_register_backend_refuses_a_taken_name():
    class Other(SimulateBackend):
        name = "ncnn"

    with pytest.raises(ValueError, match="taken"):
        register_backend(Other)
    assert get_backend("ncnn") is NcnnBackend and issubclass(NcnnBackend, Backend)


# --- param / bin --------------------------------------------------------------------------------------
def test_param_round_trips_and_refuses_other_files(tiny):
    _, _, _, work = tiny
    graph = read_param(work / "model.ncnn.param")
    again = parse_param(graph.text())
    assert [(l.type, l.name, l.bottoms, l.tops, l.params) for l in again.layers] == \
        [(l.type, l.name, l.bottoms, l.tops, l.params) for l in graph.layers]
    with pytest.raises(ModelFormatError, match="magic"):
        parse_param((work / "model.ncnn.bin").read_bytes()[:64].decode("latin-1"), source="model.ncnn.bin")


def test_layer_spans_cover_the_bin_with_ncnns_weight_layout(tiny):
    _, _, _, work = tiny
    graph, data = read_param(work / "model.ncnn.param"), (work / "model.ncnn.bin").read_bytes()
    spans = layer_spans(graph, data)
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for layer, (start, end) in zip(graph.layers, spans):
        if layer.type == "Convolution":  # 4-byte flag + fp32 weights, raw fp32 bias
            assert end - start == 4 + 4 * layer.get_int(6) + 4 * layer.get_int(0)
            assert data[start:start + 4] == b"\0\0\0\0"


def test_int8_bin_is_laid_out_as_ncnn2int8_writes_it(tiny):
    _, _, backend, work = tiny
    q = backend.int8
    conv1, conv2 = (l for l in q.graph.layers if l.type == "Convolution")
    assert (conv1.params["8"], conv2.params["8"]) == ("102", "2")  # conv1 -> conv2: requantisation fused
    assert q.top_scales[conv1.name] == q.bottom_scales[conv2.name]
    spans = layer_spans(q.graph, q.data)  # ncnn itself reads the scales back: the spans grew by them
    start, end = spans[q.graph.layers.index(conv1)]
    n = conv1.get_int(0)
    tail = np.frombuffer(q.data[end - 4 * (n + 2): end], "<f4")
    assert end - start == 4 + 4 * conv1.get_int(6) + 4 * n + 4 * (n + 2)
    np.testing.assert_array_equal(tail[:n], backend.scales[conv1.name].weight)
    assert tail[n] == np.float32(q.bottom_scales[conv1.name]) and tail[n + 1] == np.float32(q.top_scales[conv1.name])


def test_split_fusion_uses_the_first_readers_scale_and_depthwise_scales_per_group(tmp_path):
    qm, _ = _quantized(branching())
    backend = NcnnBackend()
    backend.prepare(qm.folded, qm.plan, PROFILE, work_dir=tmp_path)
    layers = {backend.layer_names[l.name]: l for l in backend.int8.graph.layers if l.name in backend.layer_names}
    assert layers["conv1"].params["8"] == "102"  # conv1 -> Split -> {conv2, dw}: every reader is an int8 conv
    assert layers["dw"].params["8"] == "101"     # depthwise (one weight scale per group) -> conv4
    assert layers["conv2"].params["8"] == "2" and layers["conv4"].params["8"] == "2"  # read by the Add
    split_tops = next(l.tops for l in backend.int8.graph.layers if l.type == "Split")
    assert set(split_tops) <= set(backend.int8.code_blobs)
    first_reader = next(l for l in backend.int8.graph.layers if l.bottoms == [split_tops[0]])
    assert backend.int8.top_scales[layers["conv1"].name] == backend.int8.bottom_scales[first_reader.name]


def test_no_fusion_through_a_split_that_feeds_a_non_conv(tmp_path):
    qm, _ = _quantized(branching(add_reads_relu=True))
    backend = NcnnBackend()
    backend.prepare(qm.folded, qm.plan, PROFILE, work_dir=tmp_path)
    conv1 = next(l for l in backend.int8.graph.layers if backend.layer_names.get(l.name) == "conv1")
    assert conv1.params["8"] == "2" and not any(b in backend.int8.code_blobs for b in conv1.tops)


# --- runtime ----------------------------------------------------------------------------------------
def test_fp32_export_matches_onnxruntime_and_names_what_it_fused(tiny):
    qm, x, backend, work = tiny
    from harness.model.runner import TapRunner
    from harness.quant.calibration import as_model

    reference = TapRunner(as_model(qm.folded), taps="all").run(x)
    values = backend.run_fp32({"input": x})
    assert set(values) == {"input", "r1", "out"} and backend.tensor_map.unmapped == ("c1",)  # Conv fused into Relu
    for name in ("r1", "out"):
        assert np.abs(values[name] - reference[name]).max() <= 1e-5 * max(1.0, np.abs(reference[name]).max())


def test_int8_agrees_with_the_simulation_within_one_step(tiny):
    qm, x, backend, _ = tiny
    sim = SimulateBackend()
    sim.prepare(qm.folded, qm.plan, PROFILE)
    real, simulated = backend.run({"input": x}), sim.run({"input": x})
    assert backend.tensor_map.requantized == {"r1": "conv2"}
    step = plan_steps(qm.plan)["r1"]
    codes = real["r1"] / step  # between fused convs ncnn keeps codes: dequantised, they sit on the grid
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert np.abs(real["r1"] - sim.edge_value(simulated, "r1", "conv2")).max() <= step * 1.001
    acc = FidelityAccumulator(steps=plan_steps(qm.plan), requantized=backend.tensor_map.requantized,
                              edge=sim.edge_value)
    acc.update(real, simulated, simulated)
    assert FidelitySummary.of(acc.compute()).failing == ()


def test_int8_model_with_int8_inference_off_is_refused(tiny):
    _, _, _, work = tiny
    with pytest.raises(ConfigError) as info:
        NcnnRunner(work / "model.int8.param", work / "model.int8.bin", options=NcnnOptions(use_int8_inference=False))
    assert "use_int8_inference" in str(info.value) and "crashes" in str(info.value)
    with pytest.raises(ConfigError, match="use_int8_inference"):
        load_ncnn_model(work / "model.int8.param", work / "model.int8.bin", int8_inference=False)


def test_non_contiguous_inputs_are_read_in_their_logical_order(tiny):
    _, x, backend, _ = tiny
    expected = backend.run({"input": x})["out"]
    np.testing.assert_array_equal(backend.run({"input": np.asfortranarray(x)})["out"], expected)


def test_six_bit_follows_ncnn2table_convolutions_only(tmp_path):
    qm, _ = _quantized(branching())
    backend = NcnnBackend(six_bit=True)
    backend.prepare(qm.folded, qm.plan, PROFILE, work_dir=tmp_path)
    names = {backend.layer_names.get(n) for n in six_bit_layers(backend.int8.graph)}
    assert names == {"conv1"}  # the 3x3 depthwise conv is not 6-bit, the 1x1 convs are not 3x3
    conv1 = next(l for l in backend.int8.graph.layers if backend.layer_names.get(l.name) == "conv1")
    w = numpy_helper.to_array(next(t for t in qm.folded.graph.initializer if t.name == "conv1_w")).reshape(8, -1)
    start, end = layer_spans(backend.int8.graph, backend.int8.data)[backend.int8.graph.layers.index(conv1)]
    written = np.frombuffer(backend.int8.data[end - 4 * 10: end - 8], "<f4")
    np.testing.assert_array_equal(written, (np.float32(31) / np.abs(w).max(axis=1)).astype(np.float32))


def test_pnnx_is_found_without_importing_torch():
    code = "import sys; from harness.backends.ncnn.export import pnnx_executable as p; assert p(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- a user's own ncnn model --------------------------------------------------------------------------
def test_own_model_with_a_table_runs_as_the_export(tiny, tmp_path):
    _, x, backend, work = tiny
    q = backend.int8
    table = NcnnTable(weight_scales={n: backend.scales[n].weight for n in q.bottom_scales},
                      activation_scales={n: q.bottom_scales[n] for n in q.bottom_scales})
    path = write_ncnn_table(table, tmp_path / "model.table")
    own = load_ncnn_model(work / "model.ncnn.param", work / "model.ncnn.bin", table=path, work_dir=tmp_path)
    mine = backend.run({"input": x})
    theirs = own.run({"in0": x})
    for tensor, blob in backend.tensor_map.names.items():
        np.testing.assert_array_equal(theirs[blob].reshape(mine[tensor].shape), mine[tensor])
    with pytest.raises(ConfigError, match="already int8"):
        load_ncnn_model(tmp_path / "model.int8.param", tmp_path / "model.int8.bin", table=path, work_dir=tmp_path)


def test_own_int8_model_dequantizes_its_fused_blobs(tiny):
    _, x, backend, work = tiny
    own = load_ncnn_model(work / "model.int8.param", work / "model.int8.bin")
    assert own.fp32 is None
    mine, theirs = backend.run({"input": x}), own.run({"in0": x})
    blob = backend.tensor_map.names["r1"]
    np.testing.assert_array_equal(theirs[blob].reshape(mine["r1"].shape), mine["r1"])


# --- fidelity accounting ------------------------------------------------------------------------------
def test_fidelity_counts_steps_and_uses_the_range_step_where_the_plan_has_none():
    acc = FidelityAccumulator(steps={"q": 0.5})
    real = {"q": np.array([0.0, 0.5, 1.0, 2.0]), "f": np.array([0.0, 1.0, 2.0, 127.0])}
    sim = {"q": np.array([0.0, 0.0, 1.0, 0.0]), "f": np.array([0.0, 0.0, 2.0, 127.0])}
    acc.update(real, sim, {"f": np.array([0.0, 1.0, 2.0, 127.0])})
    rows = {r.name: r for r in acc.compute()}
    assert rows["q"].max_steps == 4.0 and rows["q"].beyond_one_step == 0.25 and rows["q"].step_source == "plan"
    assert rows["f"].step == 1.0 and rows["f"].max_steps == 1.0 and rows["f"].beyond_one_step == 0.0
    assert FidelitySummary.of(list(rows.values())).failing == ("q",)


# --- real models ------------------------------------------------------------------------------------
_SUITES = {"mobilenet_v2": "mobilenet_v2_ncnn_int8.toml", "ultraface": "ultraface_rfb320_ncnn_int8.toml"}


@pytest.fixture(scope="module", params=sorted(_SUITES))
def real(request, realmodels_dir, suites_dir, tmp_path_factory):
    """The bundled suite's plan exported to ncnn and run beside the simulation on the 24 UltraFace photos."""
    from harness.data import preprocess, read_image
    from harness.engine.stages import SuiteStages
    from harness.suite import load_suite

    stages = SuiteStages(load_suite(suites_dir / _SUITES[request.param]), threads=2)
    photos = sorted((realmodels_dir / "ultraface" / "images").glob("*.jpg"))
    inputs = (preprocess(read_image(p), stages.data.spec)[0][None] for p in photos)
    result = compare_backend(stages.folded, stages.quantized.plan, stages.profile, inputs,
                             backend=NcnnBackend(threads=2), work_dir=tmp_path_factory.mktemp(request.param), threads=2)
    return request.param, result, stages.folded


@pytest.mark.realmodel
def test_real_ncnn_fp32_export_matches_onnxruntime_on_every_tensor_it_keeps(real):
    from harness.engine.layers import fused_away

    _, result, folded = real
    assert result.fp32_max_abs is not None and result.fp32_max_abs <= 1e-4  # measured 2.8e-5 / 3.0e-5
    assert result.unmapped and set(result.unmapped) <= fused_away(folded)  # only Conv outputs fused into an activation


@pytest.mark.realmodel
def test_real_ncnn_int8_agrees_with_the_simulation_at_the_task_level(real):
    from harness.backends.compare import mean_cosine, top1_agreement
    from harness.backends.fidelity import cosine

    name, result, _ = real
    if name == "mobilenet_v2":
        fp32, sim, ncnn = (result.stacked(c, "logits") for c in ("fp32", "simulate", "real"))
        assert top1_agreement(sim, ncnn) >= 23  # measured 24 of 24
        assert abs(mean_cosine(sim, fp32) - mean_cosine(ncnn, fp32)) <= 0.005  # measured 0.9822 both
    else:
        face = {c: result.stacked(c, "scores")[..., 1] for c in ("fp32", "simulate", "real")}
        assert cosine(face["simulate"], face["real"]) >= 0.999  # measured 0.99962
        assert abs(cosine(face["simulate"], face["fp32"]) - cosine(face["real"], face["fp32"])) <= 0.002


@pytest.mark.realmodel
def test_real_first_layer_agrees_with_the_simulation_within_one_step(real):
    _, result, _ = real
    first = result.tensors[0]  # the first conv's output, read as int8 codes by the next conv
    assert first.step_source == "plan" and first.max_steps <= 1.001 and first.beyond_one_step == 0.0


@pytest.mark.realmodel
@pytest.mark.xfail(strict=True, reason="the simulation is not ncnn's arithmetic yet: x / (1/s) instead of x * s, float "
                   "conv instead of integer conv * float32 1/(s_in*s_w) + bias (FMA), and ncnn's x86 depthwise int8 "
                   "kernel (pack-8) uses _mm_rcp_ps; one-step flips then grow layer by layer (docs/backends.md)")
def test_real_every_tensor_within_one_step_on_999_per_mille(real):
    _, result, _ = real
    assert result.summary.failing == ()


@pytest.mark.realmodel
def test_own_retinaface_ncnn_model_runs_and_takes_a_table(realmodels_dir, tmp_path):
    import cv2

    from harness.backends.fidelity import cosine
    from harness.backends.ncnn.mapping import ncnn_weights

    folder = realmodels_dir / "retinaface_mnet"
    image = cv2.cvtColor(cv2.resize(cv2.imread(str(folder / "test.jpg")), (640, 640)), cv2.COLOR_BGR2RGB)
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)  # RGB 0..255, no mean (README)
    fp32 = load_ncnn_model(folder / "retina.param", folder / "retina.bin")
    heads = [f"face_rpn_{h}_stride{s}" for s in (8, 16, 32) for h in ("cls_prob_reshape", "bbox_pred", "landmark_pred")]
    ref = fp32.run({"data": x})
    assert set(heads) <= set(ref) and fp32.tensor_map.unmapped == ()
    # A min/max table as ncnn2table would key it (layer names of the .param), from this image.
    graph, data = read_param(folder / "retina.param"), (folder / "retina.bin").read_bytes()
    weights, scales, acts = ncnn_weights(graph, data, layer_spans(graph, data)), {}, {}
    for layer in graph.layers:
        if layer.name in weights:
            rows = layer.get_int(7, 1) if layer.type == "ConvolutionDepthWise" else layer.get_int(0)
            scales[layer.name] = (127 / np.abs(weights[layer.name].reshape(rows, -1)).max(axis=1)).astype(np.float32)
            acts[layer.name] = float(127 / np.abs(ref[layer.bottoms[0]]).max())
    table = write_ncnn_table(NcnnTable(weight_scales=scales, activation_scales=acts), tmp_path / "retina.table")
    int8 = load_ncnn_model(folder / "retina.param", folder / "retina.bin", table=table, work_dir=tmp_path)
    out = int8.run({"data": x})
    assert int8.runner.graph.is_int8 and all(cosine(out[h], ref[h]) >= 0.8 for h in heads)  # measured >= 0.869
    assert cosine(out["face_rpn_cls_prob_reshape_stride8"], ref["face_rpn_cls_prob_reshape_stride8"]) >= 0.999
