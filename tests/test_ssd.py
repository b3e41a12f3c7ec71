"""SSD priors (Caffe PriorBox order and grid conventions), decode/encode, and UltraFace parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.tasks.ssd import (
    PriorBoxLayer,
    center_to_corner,
    corner_to_center,
    decode_boxes,
    encode_boxes,
    num_priors,
    prior_boxes,
)
from harness.tasks.ultraface import decode_ultraface, ultraface_priors


def test_caffe_order_within_a_cell_and_row_major_cells():
    layer = PriorBoxLayer(min_sizes=(30,), max_sizes=(60,), aspect_ratios=(2.0, 2.0, 1.0), feature_size=(2, 2), step=150)
    priors = prior_boxes([layer], image_size=(300, 300)).astype(np.float64)
    assert layer.expanded_aspect_ratios == (2.0, 0.5)  # duplicates and 1 dropped, flip adds 1/2 after 2
    assert priors.shape == (2 * 2 * 4, 4)
    s2 = math.sqrt(2)
    expected_wh = [(30, 30), (math.sqrt(30 * 60),) * 2, (30 * s2, 30 / s2), (30 / s2, 30 * s2)]
    np.testing.assert_allclose(priors[:4, 2:] * 300, expected_wh, rtol=1e-6)
    centres = priors[::4, :2] * 300
    np.testing.assert_allclose(centres, [(75, 75), (225, 75), (75, 225), (225, 225)], rtol=1e-6)


def test_multiple_min_sizes_each_carry_their_max_and_ratios():
    layer = PriorBoxLayer(min_sizes=(10, 20), max_sizes=(15, 40), aspect_ratios=(3,), flip=False, feature_size=(1, 1))
    wh = prior_boxes([layer], image_size=(100, 100))[:, 2:] * 100
    s3 = math.sqrt(3)
    expected = [(10, 10), (math.sqrt(150),) * 2, (10 * s3, 10 / s3), (20, 20), (math.sqrt(800),) * 2, (20 * s3, 20 / s3)]
    np.testing.assert_allclose(wh, expected, rtol=1e-6)


def test_grid_conventions_stride_step_and_caffe_default():
    by_stride = prior_boxes([PriorBoxLayer(min_sizes=(8,), stride=32)], image_size=(320, 240))
    assert by_stride.shape[0] == 10 * 8  # ceil(240 / 32) = 8 rows
    ys = np.unique(by_stride[:, 1])
    np.testing.assert_allclose(ys, (np.arange(8) + 0.5) * 32 / 240, rtol=1e-6)  # step = stride
    caffe_default = prior_boxes([PriorBoxLayer(min_sizes=(8,), feature_size=(10, 8))], image_size=(320, 240))
    np.testing.assert_allclose(np.unique(caffe_default[:, 1]), (np.arange(8) + 0.5) / 8, rtol=1e-6)
    explicit = prior_boxes([PriorBoxLayer(min_sizes=(8,), stride=32, step=(30.0, 30.0), offset=0.0)], image_size=(320, 240))
    np.testing.assert_allclose(np.unique(explicit[:, 0]), np.arange(10) * 30 / 320, rtol=1e-6)


def test_clip_modes_differ_as_documented():
    layer = PriorBoxLayer(min_sizes=(100,), feature_size=(1, 1), offset=0.0)  # centre at (0, 0): half outside
    none = prior_boxes([layer], image_size=(100, 100))
    corners = prior_boxes([layer], image_size=(100, 100), clip="corners")
    centre = prior_boxes([layer], image_size=(100, 100), clip="center")
    np.testing.assert_allclose(none[0], [0, 0, 1, 1])
    np.testing.assert_allclose(corners[0], [0.25, 0.25, 0.5, 0.5])  # corners (-.5,-.5,.5,.5) -> (0,0,.5,.5)
    np.testing.assert_allclose(centre[0], [0, 0, 1, 1])
    with pytest.raises(ValueError):
        prior_boxes([layer], image_size=(100, 100), clip="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_sizes": ()},
        {"min_sizes": (10,), "max_sizes": (20, 30)},
        {"min_sizes": (10,), "max_sizes": (5,)},
        {"min_sizes": (10,), "aspect_ratios": (-1,)},
        {"min_sizes": (10,), "stride": None, "feature_size": None},
    ],
)
def test_invalid_layers_are_refused(kwargs):
    kwargs = {"stride": 8, **kwargs}
    with pytest.raises(ValueError):
        PriorBoxLayer(**kwargs)


_layers = st.builds(
    PriorBoxLayer,
    min_sizes=st.lists(st.integers(4, 64), min_size=1, max_size=3).map(tuple),
    aspect_ratios=st.lists(st.sampled_from([1.0, 2.0, 3.0, 0.5]), max_size=3).map(tuple),
    flip=st.booleans(),
    stride=st.sampled_from([8, 16, 32, 64, 100]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_layers, min_size=1, max_size=4), st.integers(32, 400), st.integers(32, 400), st.booleans())
def test_prior_count_formula(layers, width, height, with_max):
    if with_max:
        layers = [PriorBoxLayer(min_sizes=l.min_sizes, max_sizes=tuple(m + 5 for m in l.min_sizes),
                                aspect_ratios=l.aspect_ratios, flip=l.flip, stride=l.stride) for l in layers]
    priors = prior_boxes(layers, image_size=(width, height))
    expected = 0
    for layer in layers:
        distinct = {r for r in layer.aspect_ratios if r != 1.0}
        # flip adds 1/ar unless 1/ar is itself already listed first (e.g. 2 then 0.5)
        per_min = 1 + int(with_max) + len(layer.expanded_aspect_ratios)
        assert len(layer.expanded_aspect_ratios) <= len(distinct) * (2 if layer.flip else 1)
        expected += math.ceil(width / layer.stride) * math.ceil(height / layer.stride) * per_min * len(layer.min_sizes)
    assert priors.shape == (expected, 4) == (num_priors(layers, image_size=(width, height)), 4)
    assert priors.dtype == np.float32


def test_expanded_ratios_count_without_overlap():
    assert PriorBoxLayer(min_sizes=(1,), aspect_ratios=(2, 3), stride=1).expanded_aspect_ratios == (2, 0.5, 3, 1 / 3)
    assert PriorBoxLayer(min_sizes=(1,), aspect_ratios=(2, 3), flip=False, stride=1).num_priors_per_cell == 3


_boxes = st.tuples(
    st.floats(0.0, 0.8), st.floats(0.0, 0.8), st.floats(0.01, 0.2), st.floats(0.01, 0.2)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@given(st.lists(_boxes, min_size=1, max_size=20), st.sampled_from([(0.1, 0.2), (0.1, 0.1, 0.2, 0.2), (1.0, 1.0)]))
def test_encode_decode_round_trip(boxes, variances):
    boxes = np.asarray(boxes)
    priors = corner_to_center(np.clip(boxes + 0.03, 0, 1))  # nearby priors, as after matching
    loc = encode_boxes(boxes, priors, variances=variances)
    decoded = decode_boxes(loc.astype(np.float64), priors, variances=variances)
    np.testing.assert_allclose(decoded, boxes, atol=1e-5)


def test_decode_formula_and_options():
    priors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    loc = np.array([[[1.0, -2.0, 0.5, 0.0]]], np.float32)  # batch axis in front
    centre = decode_boxes(loc, priors, variances=(0.1, 0.2), form="center")
    np.testing.assert_allclose(centre[0, 0], [0.5 + 0.1 * 0.2, 0.5 - 0.2 * 0.4, 0.2 * math.exp(0.1), 0.4], rtol=1e-6)
    corners = decode_boxes(loc, priors)
    np.testing.assert_allclose(corners, center_to_corner(centre), rtol=1e-6)
    big = decode_boxes(np.array([[0, 0, 10.0, 10.0]], np.float32), priors, clip=True)
    assert big.min() >= 0 and big.max() <= 1
    with pytest.raises(ValueError):
        decode_boxes(loc, priors, variances=(0.1, 0.2, 0.3))


def test_corner_center_inverse():
    b = np.array([[0.1, 0.2, 0.5, 0.9]])
    np.testing.assert_allclose(center_to_corner(corner_to_center(b)), b)


# --- UltraFace: our priors + decode must reproduce the decoder embedded in the ONNX model -------------
def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # these files list initializers as inputs; ORT warns once per tensor
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _embedded_priors(model_path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    consts = [
        numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"
    ]
    pairs = [c[0] for c in consts if c.shape == (1, 4420, 2)]
    # The decoder holds prior_wh, prior_cxcy, prior_wh (in that order in both RFB and slim graphs).
    return np.concatenate([pairs[1], pairs[0]], axis=1)


@pytest.mark.realmodel
@pytest.mark.parametrize("variant", ["RFB", "slim"])
def test_ultraface_priors_equal_the_embedded_ones(realmodels_dir, variant):
    embedded = _embedded_priors(realmodels_dir / "ultraface" / "onnx" / f"version-{variant}-320.onnx")
    ours = ultraface_priors((320, 240))
    assert ours.shape == (4420, 4)
    assert np.abs(ours - embedded).max() <= 1e-7
    # The textbook grid (step = stride, i.e. (i + 0.5) / (W / stride)) is off by up to 0.0625 (stride 32):
    textbook_layers = [
        PriorBoxLayer(min_sizes=sizes, stride=stride)
        for stride, sizes in zip((8, 16, 32, 64), ((10, 16, 24), (32, 48), (64, 96), (128, 192, 256)))
    ]
    textbook = prior_boxes(textbook_layers, image_size=(320, 240), clip="center")
    assert np.abs(textbook - ours).max() == pytest.approx(0.0625, abs=1e-6)


@pytest.mark.realmodel
@pytest.mark.parametrize("variant", ["RFB", "slim"])
def test_ultraface_decode_reproduces_embedded_decoder(realmodels_dir, variant):
    from harness.data import PreprocessSpec, preprocess, read_image

    onnx_dir = realmodels_dir / "ultraface" / "onnx"
    full = _session(onnx_dir / f"version-{variant}-320.onnx")
    raw = _session(onnx_dir / f"version-{variant}-320_without_postprocessing.onnx")
    spec = PreprocessSpec.from_dict({"size": [320, 240], "channel_order": "rgb", "mean": 127, "std": 128})
    priors = ultraface_priors((320, 240))
    images = sorted((realmodels_dir / "ultraface" / "images").glob("*.jpg"))[:4]
    worst = 0.0
    for path in images:
        x = preprocess(read_image(path), spec)[0][None]
        scores_a, boxes_a = full.run(None, {"input": x})
        scores_b, boxes_b = raw.run(None, {"input": x})
        np.testing.assert_array_equal(scores_a, scores_b)
        worst = max(worst, float(np.abs(decode_ultraface(boxes_b[0], priors) - boxes_a[0]).max()))
    # Measured: 1.19e-7 (one float32 ulp near 1.0) for both RFB-320 and slim-320.
    assert worst <= 1e-5, f"max abs error {worst:.3g}"
