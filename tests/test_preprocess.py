"""PreprocessSpec: spellings, validation, geometry, channels, YUV and layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.preprocess import PreprocessSpec, preprocess, preprocess_batch
from harness.data.yuv import bgr_to_yuv420sp, yuv420sp_roundtrip
from harness.errors import ConfigError, DataError


def _image(h: int = 37, w: int = 53, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- toolchain spellings ----------------------------------------------------------------------------
@pytest.mark.parametrize("mean, std", [(127.5, 127.5), (128.0, 128.0), ((104.0, 117.0, 123.0), (58.82, 57.1, 59.3))])
def test_ncnn_nnie_tflite_spellings_give_identical_tensors(tmp_path, mean, std):
    mean3 = list(mean) if isinstance(mean, tuple) else [mean] * 3
    std3 = list(std) if isinstance(std, tuple) else [std] * 3
    (tmp_path / "mean.txt").write_text("\n".join(str(m) for m in mean3) + "\n")
    base = {"size": [32, 24], "channel_order": "rgb"}
    spellings = {
        "canonical": {"mean": mean3, "std": std3},
        "ncnn": {"mean": mean3, "norm": [1.0 / s for s in std3]},
        "nnie_list": {"mean_file": mean3, "data_scale": [1.0 / s for s in std3]},
        "nnie_file": {"mean_file": "mean.txt", "data_scale": [1.0 / s for s in std3]},
        "tflite": {"mean_values": mean3, "std_dev_values": std3},
    }
    image = _image()
    tensors = {
        name: preprocess(image, PreprocessSpec.from_dict({**base, **keys}, base_dir=tmp_path))[0]
        for name, keys in spellings.items()
    }
    reference = tensors.pop("canonical")
    for name, tensor in tensors.items():
        assert np.array_equal(tensor, reference), name


def test_nnie_rgb_order_spelling():
    a = PreprocessSpec.from_dict({"size": [8, 8], "RGB_order": "RGB"})
    assert a.channel_order == "rgb"


def test_normalisation_formula_matches_hand_computation():
    spec = PreprocessSpec.from_dict({"size": [53, 37], "channel_order": "rgb", "mean": [1, 2, 3], "std": [4, 5, 6]})
    image = _image()
    tensor, _ = preprocess(image, spec)
    rgb = image[:, :, ::-1].astype(np.float64)
    expected = ((rgb - [1, 2, 3]) / [4, 5, 6]).transpose(2, 0, 1)
    np.testing.assert_allclose(tensor, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "table",
    [
        {"size": [8, 8], "std": 2, "norm": 0.5},
        {"size": [8, 8], "std": 2, "data_scale": 0.5},
        {"size": [8, 8], "norm": 2, "std_dev_values": 0.5},
        {"size": [8, 8], "mean": 2, "mean_file": [2, 2, 2]},
        {"size": [8, 8], "mean": 2, "mean_values": 2},
        {"size": [8, 8], "channel_order": "rgb", "RGB_order": "RGB"},
    ],
)
def test_two_spellings_of_one_quantity_are_refused(table):
    with pytest.raises(ConfigError, match="twice"):
        PreprocessSpec.from_dict(table)


def test_unknown_key_names_the_key_and_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        PreprocessSpec.from_dict({"size": [8, 8], "scale": 0.5})
    message = str(info.value)
    assert "'scale'" in message and "data_scale" in message and "std_dev_values" in message


@pytest.mark.parametrize(
    "table, fragment",
    [
        ({}, "size"),
        ({"size": 224}, "size"),
        ({"size": [0, 8]}, "size"),
        ({"size": [8, 8], "std": 0}, "std"),
        ({"size": [8, 8], "norm": 0}, "norm"),
        ({"size": [8, 8], "mean": [1, 2]}, "mean"),
        ({"size": [8, 8], "channel_order": "gray", "mean": [1, 2, 3]}, "mean"),
        ({"size": [8, 8], "channel_order": "yuv"}, "channel_order"),
        ({"size": [8, 8], "interpolation": "lanczos"}, "interpolation"),
        ({"size": [224, 224], "resize": "short_side"}, "short_side"),
        ({"size": [224, 224], "resize": "short_side", "short_side": 200}, "short_side"),
        ({"size": [224, 224], "short_side": 256}, "short_side"),
        ({"size": [8, 8], "RGB_order": "GBR"}, "RGB_order"),
        ({"size": [8, 8], "mean_file": "does_not_exist.txt"}, "mean_file"),
        ({"size": [8, 8], "resize": "letterbox", "pad_value": 300}, "pad_value"),
    ],
)
def test_bad_tables_raise_config_error(table, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PreprocessSpec.from_dict(table)


_specs = st.builds(
    dict,
    size=st.tuples(st.integers(1, 640), st.integers(1, 640)).map(list),
    channel_order=st.sampled_from(["rgb", "bgr"]),
    interpolation=st.sampled_from(["bilinear", "nearest", "area", "cubic"]),
    mean=st.lists(st.floats(0, 255), min_size=3, max_size=3),
    std=st.lists(st.floats(0.01, 300), min_size=3, max_size=3),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    dtype=st.sampled_from(["float32", "uint8"]),
    image_type=st.sampled_from(["bgr", "yuv420sp_nv12", "yuv420sp_nv21"]),
)


@given(_specs)
def test_to_dict_round_trips(table):
    spec = PreprocessSpec.from_dict(table)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_to_dict_round_trips_special_modes():
    for table in (
        {"size": [224, 224], "resize": "short_side", "short_side": 256},
        {"size": [320, 320], "resize": "letterbox", "pad_value": 114, "letterbox_align": "top_left"},
    ):
        spec = PreprocessSpec.from_dict(table)
        assert PreprocessSpec.from_dict(spec.to_dict()) == spec


# --- channels, layout, dtype ------------------------------------------------------------------------
def test_rgb_is_bgr_reversed_and_nhwc_is_nchw_transposed():
    image = _image()
    common = {"size": [20, 10], "mean": [10, 20, 30], "std": [1, 2, 3]}
    bgr, _ = preprocess(image, PreprocessSpec.from_dict({**common, "channel_order": "bgr"}))
    rgb, _ = preprocess(image, PreprocessSpec.from_dict({**common, "channel_order": "rgb", "mean": [30, 20, 10], "std": [3, 2, 1]}))
    assert bgr.shape == (3, 10, 20)
    assert np.array_equal(rgb, bgr[::-1])
    nhwc, _ = preprocess(image, PreprocessSpec.from_dict({**common, "layout": "NHWC"}))
    assert nhwc.shape == (10, 20, 3) and np.array_equal(nhwc, bgr.transpose(1, 2, 0))


def test_gray_has_one_channel_and_uses_opencv_weights():
    image = _image()
    tensor, _ = preprocess(image, PreprocessSpec.from_dict({"size": [53, 37], "channel_order": "gray"}))
    assert tensor.shape == (1, 37, 53)
    assert np.array_equal(tensor[0], cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32))


def test_uint8_dtype_returns_raw_pixels():
    image = _image()
    spec = PreprocessSpec.from_dict({"size": [53, 37], "dtype": "uint8", "mean_values": 128, "std_dev_values": 128, "layout": "NHWC"})
    tensor, _ = preprocess(image, spec)
    assert tensor.dtype == np.uint8 and np.array_equal(tensor, image)


def test_batch_stacks_on_a_new_axis():
    spec = PreprocessSpec.from_dict({"size": [16, 12]})
    batch, metas = preprocess_batch([_image(seed=1), _image(20, 30, seed=2)], spec)
    assert batch.shape == (2, 3, 12, 16) and batch.dtype == np.float32
    assert [m.original_size for m in metas] == [(53, 37), (30, 20)]
    assert np.array_equal(batch[1], preprocess(_image(20, 30, seed=2), spec)[0])
    with pytest.raises(DataError):
        preprocess_batch([], spec)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)])
def test_non_bgr_uint8_input_is_refused(bad):
    with pytest.raises(DataError):
        preprocess(bad, PreprocessSpec.from_dict({"size": [4, 4]}))


# --- geometry ---------------------------------------------------------------------------------------
def test_short_side_crop_geometry_and_box_mapping():
    image = _image(300, 400)
    spec = PreprocessSpec.from_dict({"size": [224, 224], "resize": "short_side", "short_side": 256, "dtype": "uint8", "layout": "NHWC"})
    tensor, meta = preprocess(image, spec)
    resized = cv2.resize(image, (341, 256), interpolation=cv2.INTER_LINEAR)  # int(256 * 400 / 300) = 341
    left, top = int(round((341 - 224) / 2)), int(round((256 - 224) / 2))
    assert np.array_equal(tensor, resized[top : top + 224, left : left + 224])
    assert meta.offset == (-left, -top) and meta.scale == (341 / 400, 256 / 300)
    box = np.array([[10.0, 20.0, 200.0, 100.0]])
    np.testing.assert_allclose(meta.to_original(meta.to_input(box), clip=False), box)


@pytest.mark.parametrize("align", ["center", "top_left"])
def test_letterbox_pads_with_pad_value_and_maps_boxes_back(align):
    image = np.full((100, 200, 3), 200, np.uint8)  # wide: padding goes above and below
    spec = PreprocessSpec.from_dict(
        {"size": [64, 64], "resize": "letterbox", "pad_value": 114, "letterbox_align": align, "dtype": "uint8", "layout": "NHWC"}
    )
    tensor, meta = preprocess(image, spec)
    top = 16 if align == "center" else 0
    assert meta.offset == (0.0, float(top)) and meta.scale == (64 / 200, 32 / 100)
    assert (tensor[top : top + 32] == 200).all()
    padding = np.concatenate([tensor[:top], tensor[top + 32 :]])
    assert padding.shape[0] == 32 and (padding == 114).all()
    # The whole image maps to its content region, and back.
    content = meta.to_input(np.array([0, 0, 200, 100]), normalized=True)
    np.testing.assert_allclose(content, [0, top / 64, 1, (top + 32) / 64])
    np.testing.assert_allclose(meta.to_original(content, normalized=True), [0, 0, 200, 100])


def test_to_original_clips_to_the_image():
    spec = PreprocessSpec.from_dict({"size": [64, 64], "resize": "letterbox"})
    _, meta = preprocess(np.zeros((100, 200, 3), np.uint8), spec)
    assert meta.to_original(np.array([0.0, 0.0, 1.0, 1.0]), normalized=True).tolist() == [0, 0, 200, 100]


# --- YUV camera path --------------------------------------------------------------------------------
def test_nv12_and_nv21_layouts_interleave_chroma_in_opposite_order():
    image = _image(8, 12)
    i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
    u, v = i420[8:].reshape(-1)[:24], i420[8:].reshape(-1)[24:]
    nv12 = bgr_to_yuv420sp(image, "yuv420sp_nv12")
    nv21 = bgr_to_yuv420sp(image, "yuv420sp_nv21")
    assert nv12.shape == (12, 12)
    assert np.array_equal(nv12[:8], i420[:8]) and np.array_equal(nv12[8:].reshape(-1)[0::2], u)
    assert np.array_equal(nv12[8:].reshape(-1)[1::2], v) and np.array_equal(nv21[8:].reshape(-1)[0::2], v)


def test_yuv_roundtrip_loses_chroma_detail_but_keeps_shape_and_luma():
    image = np.zeros((9, 11, 3), np.uint8)  # odd size on purpose
    image[:, 0::2] = (255, 0, 0)  # alternating blue / red columns: pure chroma detail
    image[:, 1::2] = (0, 0, 255)
    for layout in ("yuv420sp_nv12", "yuv420sp_nv21"):
        out = yuv420sp_roundtrip(image, layout)
        assert out.shape == image.shape
        assert np.abs(out.astype(int) - image.astype(int)).max() > 60  # subsampling blurred the columns
    flat = np.full((10, 12, 3), 90, np.uint8)  # gray: no chroma, nearly lossless
    assert np.abs(yuv420sp_roundtrip(flat, "yuv420sp_nv12").astype(int) - 90).max() <= 2
    a = yuv420sp_roundtrip(image, "yuv420sp_nv12")
    b = yuv420sp_roundtrip(image, "yuv420sp_nv21")
    assert np.array_equal(a, b)  # same loss whatever the byte layout


def test_image_type_is_applied_before_resize():
    image = _image(40, 60)
    spec = PreprocessSpec.from_dict({"size": [30, 20], "image_type": "yuv420sp_nv21", "dtype": "uint8", "layout": "NHWC"})
    tensor, _ = preprocess(image, spec)
    expected = cv2.resize(yuv420sp_roundtrip(image, "yuv420sp_nv21"), (30, 20), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(tensor, expected)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 120), st.integers(1, 120), st.integers(1, 80), st.integers(1, 80))
def test_every_mode_produces_the_declared_shape(h, w, out_w, out_h):
    image = np.zeros((h, w, 3), np.uint8)
    for mode in ("stretch", "letterbox", "short_side"):
        table = {"size": [out_w, out_h], "resize": mode}
        if mode == "short_side":
            table["short_side"] = max(out_w, out_h) + 3
        spec = PreprocessSpec.from_dict(table)
        tensor, meta = preprocess(image, spec)
        assert tensor.shape == spec.input_shape
        assert meta.original_size == (w, h) and meta.input_size == (out_w, out_h)
