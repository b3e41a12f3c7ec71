"""Caffe -> ONNX import: each layer against a numpy reference of Caffe's semantics, every refusal,
and the real UltraFace Caffe twins against their ONNX originals."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message

from harness.errors import ConfigError, ModelConversionError, ModelFormatError, ModelNotFoundError
from harness.model import TapRunner, load_model, make_session, tensor_list
from harness.model.caffe import SUPPORTED_LAYER_TYPES, caffe_to_onnx, message_class

RNG = np.random.default_rng(0)
Weights = dict[str, Sequence[np.ndarray]]


# --- writing tiny Caffe models -------------------------------------------------------------------
def new_net(*inputs: tuple[str, tuple[int, ...]]) -> Message:
    """A NetParameter whose first layer is an Input layer with one top per ``(name, shape)``."""
    net = message_class("NetParameter")(name="tiny")
    data = add_layer(net, "data", "Input", [], [name for name, _ in inputs])
    for _, shape in inputs:
        data.input_param.shape.add().dim.extend(shape)
    return net


def add_layer(net: Message, name: str, kind: str, bottoms: Sequence[str], tops: Sequence[str]) -> Message:
    layer = net.layer.add(name=name, type=kind)
    layer.bottom.extend(bottoms)
    layer.top.extend(tops)
    return layer


def write_model(tmp_path: Path, net: Message, weights: Weights | None = None, *, stem: str = "net") -> Path:
    """Write ``stem.prototxt`` (structure only) and ``stem.caffemodel`` (structure + blobs)."""
    prototxt = tmp_path / f"{stem}.prototxt"
    prototxt.write_text(text_format.MessageToString(net))
    trained = message_class("NetParameter")()
    trained.CopyFrom(net)
    for layer in trained.layer:
        for array in (weights or {}).get(layer.name, []):
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    prototxt.with_suffix(".caffemodel").write_bytes(trained.SerializeToString())
    return prototxt


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    session = make_session(model.SerializeToString(), threads=1)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def convert_and_run(
    tmp_path: Path, net: Message, weights: Weights | None = None, **feeds: np.ndarray
) -> dict[str, np.ndarray]:
    return run(caffe_to_onnx(write_model(tmp_path, net, weights)), **feeds)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# --- numpy references of Caffe's layers ----------------------------------------------------------
def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride, pad, dilation, group: int) -> np.ndarray:
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, m, oh, ow), np.float64)
    mg = m // group
    for g in range(group):
        xs, ws = xp[:, g * cg : (g + 1) * cg], w[g * mg : (g + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
                cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (ow - 1) + 1, stride[1])
                patch = xs[:, :, rows, cols]
                out[:, g * mg : (g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, ws[:, :, i, j])
    return out + (0 if b is None else b[None, :, None, None])


def deconv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, group: int) -> np.ndarray:
    n, c, h, wd = x.shape
    _, mg, k, _ = w.shape
    cg = c // group
    full = np.zeros((n, mg * group, stride * (h - 1) + k, stride * (wd - 1) + k))
    for g in range(group):
        for i in range(k):
            for j in range(k):
                contrib = np.einsum("nchw,cm->nmhw", x[:, g * cg : (g + 1) * cg], w[g * cg : (g + 1) * cg, :, i, j])
                rows, cols = slice(i, i + stride * (h - 1) + 1, stride), slice(j, j + stride * (wd - 1) + 1, stride)
                full[:, g * mg : (g + 1) * mg, rows, cols] += contrib
    oh, ow = full.shape[2] - 2 * pad, full.shape[3] - 2 * pad
    return full[:, :, pad : pad + oh, pad : pad + ow] + b[None, :, None, None]


def pool_ref(x: np.ndarray, kernel, stride, pad, *, mode: str, ceil: bool = True) -> np.ndarray:
    """PoolingLayer::Forward_cpu: AVE divides by the window clipped to [-pad, size + pad)."""
    sizes = x.shape[2:]

    def pooled(n: int, k: int, s: int, p: int) -> int:
        span = n + 2 * p - k
        out = (-(-span // s) if ceil else span // s) + 1
        return out - 1 if p and (out - 1) * s >= n + p else out

    oh, ow = (pooled(n, k, s, p) for n, k, s, p in zip(sizes, kernel, stride, pad))
    y = np.zeros(x.shape[:2] + (oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            he, we = min(hs + kernel[0], sizes[0] + pad[0]), min(ws + kernel[1], sizes[1] + pad[1])
            window = x[:, :, max(hs, 0) : min(he, sizes[0]), max(ws, 0) : min(we, sizes[1])]
            divisor = (he - hs) * (we - ws)
            y[:, :, i, j] = window.max(axis=(2, 3)) if mode == "max" else window.sum(axis=(2, 3)) / divisor
    return y


def softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def close(actual: np.ndarray, expected: np.ndarray, atol: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


# --- layers ---------------------------------------------------------------------------------------
CONV_CASES = {
    "plain": dict(
        fields={"kernel_size": [3], "pad": [1]}, cin=3, cout=4, group=1, k=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)
    ),
    "group_hw_fields": dict(
        fields={"kernel_h": 3, "kernel_w": 2, "pad_h": 1, "pad_w": 0, "stride_h": 2, "stride_w": 1},
        cin=4, cout=6, group=2, k=(3, 2), stride=(2, 1), pad=(1, 0), dil=(1, 1),
    ),
    "depthwise_dilated": dict(
        fields={"kernel_size": [3], "pad": [2], "stride": [2], "dilation": [2]},
        cin=4, cout=4, group=4, k=(3, 3), stride=(2, 2), pad=(2, 2), dil=(2, 2),
    ),
    "repeated_per_axis_no_bias": dict(
        fields={"kernel_size": [3, 1], "pad": [1, 2], "stride": [1, 2], "dilation": [2, 1], "bias_term": False},
        cin=2, cout=3, group=1, k=(3, 1), stride=(1, 2), pad=(1, 2), dil=(2, 1),
    ),
}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_convolution(tmp_path: Path, case: dict) -> None:
    net = new_net(("x", (2, case["cin"], 9, 8)))
    conv = add_layer(net, "conv", "Convolution", ["x"], ["y"])
    conv.convolution_param.num_output = case["cout"]
    conv.convolution_param.group = case["group"]
    for key, value in case["fields"].items():
        if isinstance(value, list):  # a repeated field: kernel_size, pad, stride, dilation
            getattr(conv.convolution_param, key).extend(value)
        else:
            setattr(conv.convolution_param, key, value)
    w = randn(case["cout"], case["cin"] // case["group"], *case["k"])
    b = None if case["fields"].get("bias_term") is False else randn(case["cout"])
    x = randn(2, case["cin"], 9, 8)
    out = convert_and_run(tmp_path, net, {"conv": [w] + ([] if b is None else [b])}, x=x)
    close(out["y"], conv_ref(x, w, b, case["stride"], case["pad"], case["dil"], case["group"]).astype(np.float32))


def test_deconvolution(tmp_path: Path) -> None:
    net = new_net(("x", (1, 4, 5, 6)))
    deconv = add_layer(net, "up", "Deconvolution", ["x"], ["y"])
    p = deconv.convolution_param
    p.num_output, p.group = 6, 2
    text_format.Parse("kernel_size: 4 stride: 2 pad: 1", p)
    w, b, x = randn(4, 3, 4, 4), randn(6), randn(1, 4, 5, 6)
    out = convert_and_run(tmp_path, net, {"up": [w, b]}, x=x)
    close(out["y"], deconv_ref(x, w, b, stride=2, pad=1, group=2).astype(np.float32))


def test_in_place_layers_keep_the_caffe_name_for_the_last_writer(tmp_path: Path) -> None:
    """conv -> (sigmoid reads the pre-ReLU value) -> in-place ReLU -> eltwise of both."""
    net = new_net(("x", (1, 2, 4, 4)))
    conv = add_layer(net, "conv1", "Convolution", ["x"], ["c"])
    conv.convolution_param.num_output, conv.convolution_param.bias_term = 3, False
    conv.convolution_param.kernel_size.append(1)
    add_layer(net, "gate", "Sigmoid", ["c"], ["s"])
    add_layer(net, "relu1", "ReLU", ["c"], ["c"]).relu_param.negative_slope = 0.1
    add_layer(net, "sum", "Eltwise", ["s", "c"], ["out"])
    w, x = randn(3, 2, 1, 1), randn(1, 2, 4, 4)
    model = caffe_to_onnx(write_model(tmp_path, net, {"conv1": [w]}))
    assert [(n.name, list(n.output)) for n in model.graph.node] == [
        ("conv1", ["c/conv1"]),  # an earlier version of blob c: "<blob>/<layer>"
        ("gate", ["s"]),
        ("relu1", ["c"]),  # the last writer keeps the Caffe name
        ("sum", ["out"]),
    ]
    assert list(model.graph.node[1].input) == ["c/conv1"]  # gate ran before relu1 in Caffe
    assert [o.name for o in model.graph.output] == ["out"]
    c = conv_ref(x, w, None, (1, 1), (0, 0), (1, 1), 1)
    close(run(model, x=x)["out"], (1 / (1 + np.exp(-c)) + np.where(c > 0, c, 0.1 * c)).astype(np.float32))


def test_graph_outputs_are_the_blobs_nobody_reads(tmp_path: Path) -> None:
    net = new_net(("x", (1, 3, 2, 2)))
    add_layer(net, "a", "TanH", ["x"], ["t"])
    add_layer(net, "b", "Sigmoid", ["t"], ["s"])
    add_layer(net, "c", "Split", ["t"], ["t1", "t2"])
    add_layer(net, "d", "Dropout", ["t1"], ["t1"])
    model = caffe_to_onnx(write_model(tmp_path, net))
    assert [o.name for o in model.graph.output] == ["s", "t2", "t1"]
    x = randn(1, 3, 2, 2)
    out = run(model, x=x)
    close(out["s"], 1 / (1 + np.exp(-np.tanh(x))))
    close(out["t1"], np.tanh(x))
    close(out["t2"], np.tanh(x))


@pytest.mark.parametrize(
    "operation, coeff, expected",
    [
        ("SUM", [], lambda a, b, c: a + b + c),
        ("SUM", [0.5, -2.0, 1.0], lambda a, b, c: 0.5 * a - 2 * b + c),
        ("PROD", [], lambda a, b, c: a * b * c),
        ("MAX", [], lambda a, b, c: np.maximum(np.maximum(a, b), c)),
    ],
)
def test_eltwise(tmp_path: Path, operation: str, coeff: list[float], expected) -> None:
    net = message_class("NetParameter")()
    data = add_layer(net, "data", "Input", [], ["a", "b", "c"])
    data.input_param.shape.add().dim.extend([2, 3, 4])  # one shape for every top
    layer = add_layer(net, "e", "Eltwise", ["a", "b", "c"], ["y"])
    text_format.Parse(f"operation: {operation}", layer.eltwise_param)
    layer.eltwise_param.coeff.extend(coeff)
    a, b, c = randn(2, 3, 4), randn(2, 3, 4), randn(2, 3, 4)
    close(convert_and_run(tmp_path, net, a=a, b=b, c=c)["y"], expected(a, b, c))


@pytest.mark.parametrize("field, value, axis", [("axis", -1, -1), ("axis", 1, 1), ("concat_dim", 2, 2)])
def test_concat(tmp_path: Path, field: str, value: int, axis: int) -> None:
    net = new_net(("a", (2, 3, 4)), ("b", (2, 3, 4)))
    setattr(add_layer(net, "cat", "Concat", ["a", "b"], ["y"]).concat_param, field, value)
    a, b = randn(2, 3, 4), randn(2, 3, 4)
    close(convert_and_run(tmp_path, net, a=a, b=b)["y"], np.concatenate([a, b], axis=axis))


@pytest.mark.parametrize("order, perm", [([0, 2, 3, 1], (0, 2, 3, 1)), ([0, 2], (0, 2, 1, 3))])
def test_permute(tmp_path: Path, order: list[int], perm: tuple[int, ...]) -> None:
    net = new_net(("x", (1, 2, 3, 4)))
    add_layer(net, "p", "Permute", ["x"], ["y"]).permute_param.order.extend(order)  # missing axes follow in order
    x = randn(1, 2, 3, 4)
    close(convert_and_run(tmp_path, net, x=x)["y"], np.transpose(x, perm))


@pytest.mark.parametrize(
    "dims, axis, num_axes, expected",
    [
        ([0, -1, 2], 0, -1, (1, 12, 2)),  # 0 copies the input dim, -1 is inferred
        ([2, 2], 1, 1, (1, 2, 2, 3, 2)),  # reshape only axis 1
        ([-1], -4, 2, (1, 12, 2)),  # axes 1..2 merged: a negative axis counts from after the last axis
        ([-1], -3, 2, (1, 4, 6)),
        ([1], -1, 0, (1, 4, 3, 2, 1)),  # insert a unit axis at the end
    ],
)
def test_reshape(tmp_path: Path, dims: list[int], axis: int, num_axes: int, expected: tuple[int, ...]) -> None:
    net = new_net(("x", (1, 4, 3, 2)))
    p = add_layer(net, "r", "Reshape", ["x"], ["y"]).reshape_param
    p.shape.dim.extend(dims)
    p.axis, p.num_axes = axis, num_axes
    x = randn(1, 4, 3, 2)
    close(convert_and_run(tmp_path, net, x=x)["y"], x.reshape(expected))


@pytest.mark.parametrize("axis", [None, 2, -1])
def test_softmax(tmp_path: Path, axis: int | None) -> None:
    net = new_net(("x", (2, 3, 4)))
    layer = add_layer(net, "sm", "Softmax", ["x"], ["y"])
    if axis is not None:
        layer.softmax_param.axis = axis
    x = randn(2, 3, 4)
    close(convert_and_run(tmp_path, net, x=x)["y"], softmax_ref(x, 1 if axis is None else axis))


POOL_CASES = {
    # (input H, W), kernel, stride, pad, and the ONNX form that gives Caffe's size
    "ceil_overhang": ((7, 6), (3, 3), (2, 2), (0, 0), "ceil_mode=1"),
    "ceil_overhang_padded": ((6, 6), (3, 3), (2, 2), (1, 1), "ceil_mode=1"),  # AVE: pads count, overhang not
    "last_window_in_padding_dropped": ((4, 5), (3, 3), (3, 3), (1, 1), "ceil_mode=0"),
    "rectangular_hw_fields": ((7, 9), (2, 3), (2, 3), (1, 0), "ceil_mode=0"),
    "mixed_axes": ((5, 6), (3, 3), (3, 3), (1, 1), "end pads"),  # H drops a window, W keeps its overhang
}


@pytest.mark.parametrize("mode", ["max", "ave"])
@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_pooling(tmp_path: Path, case: tuple, mode: str) -> None:
    size, kernel, stride, pad, form = case
    net = new_net(("x", (1, 2, *size)))
    p = add_layer(net, "pool", "Pooling", ["x"], ["y"]).pooling_param
    p.pool = 0 if mode == "max" else 1
    p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w = *kernel, *stride, *pad
    model = caffe_to_onnx(write_model(tmp_path, net))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[-1].attribute}
    assert (f"ceil_mode={attrs['ceil_mode']}" if "ceil_mode" in attrs else "end pads") == form
    x = randn(1, 2, *size)
    close(run(model, x=x)["y"], pool_ref(x, kernel, stride, pad, mode=mode))


def test_pooling_square_fields_floor_mode_and_global(tmp_path: Path) -> None:
    net = new_net(("x", (1, 3, 7, 7)))
    params = {
        "a": "pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR",
        "g": "pool: MAX global_pooling: true",
        "h": "pool: AVE global_pooling: true",
    }
    for top, text in params.items():
        text_format.Parse(text, add_layer(net, f"pool_{top}", "Pooling", ["x"], [top]).pooling_param)
    model = caffe_to_onnx(write_model(tmp_path, net))
    assert [n.op_type for n in model.graph.node] == ["AveragePool", "GlobalMaxPool", "GlobalAveragePool"]
    x = randn(1, 3, 7, 7)
    out = run(model, x=x)
    close(out["a"], pool_ref(x, (3, 3), (2, 2), (1, 1), mode="ave", ceil=False))
    close(out["g"], x.max(axis=(2, 3), keepdims=True))
    close(out["h"], x.mean(axis=(2, 3), keepdims=True))


@pytest.mark.parametrize(
    "shape, axis, transpose, bias",
    [
        ((2, 3, 2, 2), 1, False, True),  # Flatten then Gemm
        ((2, 5), 1, True, True),  # Gemm alone; weights stored (K, N)
        ((2, 3, 4), 2, False, False),  # axes before `axis` are kept: Gemm then Reshape
        ((2, 3, 4), -1, True, True),
    ],
)
def test_inner_product(tmp_path: Path, shape: tuple[int, ...], axis: int, transpose: bool, bias: bool) -> None:
    net = new_net(("x", shape))
    p = add_layer(net, "fc", "InnerProduct", ["x"], ["y"]).inner_product_param
    p.num_output, p.axis, p.transpose, p.bias_term = 4, axis, transpose, bias
    axis %= len(shape)
    k = int(np.prod(shape[axis:]))
    w, b, x = randn(*((k, 4) if transpose else (4, k))), randn(4), randn(*shape)
    out = convert_and_run(tmp_path, net, {"fc": [w, b] if bias else [w]}, x=x)
    flat = x.reshape(int(np.prod(shape[:axis])), k)
    expected = flat @ (w if transpose else w.T) + (b if bias else 0)
    close(out["y"], expected.reshape(shape[:axis] + (4,)).astype(np.float32), atol=1e-4)


def test_batchnorm_and_scale_in_place(tmp_path: Path) -> None:
    """Caffe BN stores running sums: mean and variance are divided by the third blob."""
    net = new_net(("x", (2, 3, 4, 4)))
    bn = add_layer(net, "bn", "BatchNorm", ["x"], ["x"])
    bn.batch_norm_param.eps = 1e-3
    add_layer(net, "scale", "Scale", ["x"], ["x"]).scale_param.bias_term = True
    mean, var, factor = randn(3), np.abs(randn(3)) + 0.5, np.array([4.0], np.float32)
    gamma, beta, x = randn(3), randn(3), randn(2, 3, 4, 4)
    model = caffe_to_onnx(write_model(tmp_path, net, {"bn": [mean, var, factor], "scale": [gamma, beta]}))
    assert [i.name for i in model.graph.input] == ["x"]  # a graph input keeps its Caffe name...
    # ...so the in-place writes on it get new ones; "scale/mul" is a helper of the Scale layer
    assert [o for n in model.graph.node for o in n.output] == ["x/bn", "scale/mul", "x/scale"]
    normed = (x - (mean / 4)[:, None, None]) / np.sqrt((var / 4)[:, None, None] + 1e-3)
    close(run(model, x=x)["x/scale"], normed * gamma[:, None, None] + beta[:, None, None])


def test_scale_by_a_second_input_and_over_two_axes(tmp_path: Path) -> None:
    net = new_net(("x", (2, 3, 4, 5)), ("s", (2, 3)))
    add_layer(net, "gate", "Scale", ["x", "s"], ["y"]).scale_param.axis = 0  # squeeze-excitation style
    p = add_layer(net, "affine", "Scale", ["y"], ["z"]).scale_param
    p.axis, p.num_axes = 2, -1
    x, s, w = randn(2, 3, 4, 5), randn(2, 3), randn(4, 5)
    out = convert_and_run(tmp_path, net, {"affine": [w]}, x=x, s=s)
    close(out["z"], x * s[:, :, None, None] * w)


def test_flatten_and_net_level_inputs(tmp_path: Path) -> None:
    net = message_class("NetParameter")()
    net.input.append("x")
    net.input_dim.extend([1, 2, 3, 4])  # the oldest way to declare an input
    add_layer(net, "f1", "Flatten", ["x"], ["flat"])
    text_format.Parse("axis: 1 end_axis: 2", add_layer(net, "f2", "Flatten", ["x"], ["mid"]).flatten_param)
    x = randn(1, 2, 3, 4)
    out = convert_and_run(tmp_path, net, x=x)
    close(out["flat"], x.reshape(1, 24))
    close(out["mid"], x.reshape(1, 6, 4))


def test_phase_rules_and_fields_of_layers_that_are_not_converted(tmp_path: Path) -> None:
    """A train-time data layer with fields this importer does not know is dropped, not refused."""
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(
        """
        name: "with-train-layers"
        layer { name: "train_data" type: "Data" top: "x" include { phase: TRAIN }
                transform_param { mirror: true crop_size: 227 } data_param { source: "lmdb" batch_size: 64 } }
        layer { name: "data" type: "Input" top: "x" include { phase: TEST } input_param { shape { dim: 1 dim: 2 } } }
        layer { name: "act" type: "ReLU" bottom: "x" top: "y" relu_param { engine: CAFFE } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" top: "loss" exclude { phase: TEST } loss_weight: 1 }
        """
    )
    weights = message_class("NetParameter")(layer=[{"name": "act"}])
    prototxt.with_suffix(".caffemodel").write_bytes(weights.SerializeToString())
    model = caffe_to_onnx(prototxt)
    assert [n.name for n in model.graph.node] == ["act"]
    close(run(model, x=np.array([[-1.0, 2.0]], np.float32))["y"], np.array([[0.0, 2.0]], np.float32))


def test_v1_caffemodel_and_legacy_blob_dims(tmp_path: Path) -> None:
    """Weights from a V1 (``layers``) caffemodel with 4-D legacy dims, as Caffe upgrades them."""
    net = new_net(("x", (1, 3)))
    add_layer(net, "fc", "InnerProduct", ["x"], ["y"]).inner_product_param.num_output = 2
    prototxt = write_model(tmp_path, net)
    w, b, x = randn(2, 3), randn(2), randn(1, 3)
    old = message_class("NetParameter")()
    v1 = old.layers.add(name="fc")
    for array, dims in ((w, (1, 1, 2, 3)), (b, (1, 1, 1, 2))):
        blob = v1.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
        blob.data.extend(array.ravel().tolist())
    prototxt.with_suffix(".caffemodel").write_bytes(old.SerializeToString())
    close(run(caffe_to_onnx(prototxt), x=x)["y"], x @ w.T + b)


@pytest.mark.parametrize("opset", [13, 17])
def test_result_is_checked_and_shape_inferred(tmp_path: Path, opset: int) -> None:
    net = new_net(("x", (1, 2, 5, 5)))
    pool = add_layer(net, "pool", "Pooling", ["x"], ["p"])
    text_format.Parse("pool: MAX kernel_size: 2 stride: 2", pool.pooling_param)
    add_layer(net, "sm", "Softmax", ["p"], ["y"])
    model = caffe_to_onnx(write_model(tmp_path, net), opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    infos = [*model.graph.value_info, *model.graph.output]
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in infos}
    assert shapes == {"p": [1, 2, 3, 3], "y": [1, 2, 3, 3]}  # Caffe's ceil-mode size


def test_load_model_converts_a_prototxt(tmp_path: Path) -> None:
    net = new_net(("x", (1, 2, 3, 3)))
    conv = add_layer(net, "conv", "Convolution", ["x"], ["y"])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(1)
    prototxt = write_model(tmp_path, net, {"conv": [randn(2, 2, 1, 1), randn(2)]})
    model = load_model(prototxt)
    expected = hashlib.sha256(prototxt.read_bytes() + prototxt.with_suffix(".caffemodel").read_bytes()).hexdigest()
    assert model.sha256 == expected
    assert (model.input_names, model.output_names, model.opset, model.original_opset) == (["x"], ["y"], 13, 13)


# --- refusals -------------------------------------------------------------------------------------
def conv_net() -> Message:
    net = new_net(("x", (1, 2, 4, 4)))
    conv = add_layer(net, "conv", "Convolution", ["x"], ["y"])
    conv.convolution_param.num_output = 3
    conv.convolution_param.kernel_size.append(3)
    return net


def refusal(
    tmp_path: Path, kind: type[Exception], net: Message | None = None, weights: Weights | None = None, **kw: int
) -> str:
    """Convert and return the message of the expected refusal, which must say what to expect and do."""
    prototxt = write_model(tmp_path, net if net is not None else conv_net(), weights)
    with pytest.raises(kind) as info:
        caffe_to_onnx(prototxt, **kw)
    message = str(info.value)
    assert "Expected" in message and "Try" in message
    return message


def test_missing_prototxt(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="prototxt .* does not exist"):
        caffe_to_onnx(tmp_path / "none.prototxt")


def test_missing_caffemodel_names_the_file_it_looked_for(tmp_path: Path) -> None:
    prototxt = write_model(tmp_path, conv_net())
    prototxt.with_suffix(".caffemodel").unlink()
    with pytest.raises(ModelNotFoundError, match=r"net\.caffemodel does not exist"):
        caffe_to_onnx(prototxt)


def test_unparsable_prototxt_gives_the_line(tmp_path: Path) -> None:
    prototxt = write_model(tmp_path, conv_net())
    prototxt.write_text('name: "x"\nlayer {\n  name: "a"\n  type: Convolution\n}\n')
    with pytest.raises(ModelFormatError, match="line 4"):
        caffe_to_onnx(prototxt)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xff\xff\xff\xff", "not a binary NetParameter"),
        (b"", "holds no layers"),
        (b"version https://git-lfs.github.com/spec/v1\n", "LFS"),
    ],
)
def test_caffemodel_that_is_not_a_net(tmp_path: Path, payload: bytes, match: str) -> None:
    prototxt = write_model(tmp_path, conv_net())
    prototxt.with_suffix(".caffemodel").write_bytes(payload)
    with pytest.raises(ModelFormatError, match=match):
        caffe_to_onnx(prototxt)


def test_onnx_file_as_caffemodel(tmp_path: Path) -> None:
    prototxt = write_model(tmp_path, conv_net())
    (tmp_path / "ok").mkdir()
    good = write_model(tmp_path / "ok", conv_net(), {"conv": [randn(3, 2, 3, 3), randn(3)]})
    onnx_bytes = caffe_to_onnx(good).SerializeToString()
    prototxt.with_suffix(".caffemodel").write_bytes(onnx_bytes)
    with pytest.raises(ModelFormatError, match="no layers|not a binary NetParameter"):
        caffe_to_onnx(prototxt)


def test_unsupported_layer_types_are_all_named(tmp_path: Path) -> None:
    net = conv_net()
    add_layer(net, "priors", "PriorBox", ["y", "x"], ["p"])
    add_layer(net, "norm", "LRN", ["y"], ["n"])
    message = refusal(tmp_path, ModelConversionError, net)
    assert "'priors' (PriorBox)" in message and "'norm' (LRN)" in message
    assert all(kind in message for kind in SUPPORTED_LAYER_TYPES)


def test_missing_weights(tmp_path: Path) -> None:
    message = refusal(tmp_path, ModelConversionError)
    assert "'conv' (Convolution): has no weights" in message and "weights [3, 2, 3, 3], bias [3]" in message


def test_missing_bias_blob(tmp_path: Path) -> None:
    assert "has 1 weight blobs" in refusal(tmp_path, ModelConversionError, weights={"conv": [randn(3, 2, 3, 3)]})


def test_weights_of_the_wrong_shape(tmp_path: Path) -> None:
    message = refusal(tmp_path, ModelConversionError, weights={"conv": [randn(4, 2, 3, 3), randn(3)]})
    assert "72 values of shape [4, 2, 3, 3]" in message and "expected shape [3, 2, 3, 3]" in message.lower()


def test_weights_with_the_wrong_number_of_values(tmp_path: Path) -> None:
    prototxt = write_model(tmp_path, conv_net(), {"conv": [randn(3, 2, 3, 3), randn(3)]})
    trained = message_class("NetParameter")()
    trained.ParseFromString(prototxt.with_suffix(".caffemodel").read_bytes())
    del trained.layer[1].blobs[0].data[50:]  # shape still says [3, 2, 3, 3]
    prototxt.with_suffix(".caffemodel").write_bytes(trained.SerializeToString())
    with pytest.raises(ModelConversionError, match="blob 0 \\(weights\\) has 50 values"):
        caffe_to_onnx(prototxt)


def test_bottom_that_nobody_produced(tmp_path: Path) -> None:
    net = conv_net()
    add_layer(net, "act", "ReLU", ["conv_out"], ["z"])
    message = refusal(tmp_path, ModelConversionError, net, {"conv": [randn(3, 2, 3, 3), randn(3)]})
    assert "'act' (ReLU) reads bottom 0 'conv_out', which no earlier layer" in message


def test_blob_produced_twice(tmp_path: Path) -> None:
    net = new_net(("x", (1, 2)))
    add_layer(net, "a", "ReLU", ["x"], ["y"])
    add_layer(net, "b", "Sigmoid", ["x"], ["y"])
    assert "'y' is produced again by layer 'b'" in refusal(tmp_path, ModelConversionError, net)


def test_unknown_field_in_a_converted_layer(tmp_path: Path) -> None:
    prototxt = write_model(tmp_path, conv_net())
    prototxt.write_text(prototxt.read_text().replace("kernel_size: 3", "kernel_size: 3\n    ceil_mode: false"))
    with pytest.raises(ModelConversionError, match="layer 'conv': convolution_param.ceil_mode"):
        caffe_to_onnx(prototxt)


def test_legacy_v1_prototxt(tmp_path: Path) -> None:
    prototxt = write_model(tmp_path, conv_net())
    prototxt.write_text('name: "old"\nlayers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" }\n')
    with pytest.raises(ModelConversionError, match="upgrade_net_proto_text"):
        caffe_to_onnx(prototxt)


def test_batch_statistics_are_refused(tmp_path: Path) -> None:
    net = new_net(("x", (1, 2, 3, 3)))
    add_layer(net, "bn", "BatchNorm", ["x"], ["y"]).batch_norm_param.use_global_stats = False
    assert "use_global_stats is false" in refusal(tmp_path, ModelConversionError, net)


def test_opset_below_13(tmp_path: Path) -> None:
    assert "opset 11" in refusal(tmp_path, ConfigError, opset=11)


def test_load_model_refuses_a_caffemodel_path(tmp_path: Path) -> None:
    prototxt = write_model(tmp_path, conv_net())
    with pytest.raises(ModelFormatError, match="give the .prototxt; the .caffemodel beside it is found by name"):
        load_model(prototxt.with_suffix(".caffemodel"))


# --- the real UltraFace twins ----------------------------------------------------------------------
ULTRAFACE = {"size": [320, 240], "channel_order": "rgb", "mean": 127, "std": 128}
TWINS = {
    "RFB-320": "version-RFB-320_without_postprocessing.onnx",
    "slim-320": "version-slim-320_without_postprocessing.onnx",
}


@pytest.fixture(scope="module")
def ultraface_images(realmodels_dir: Path) -> list[np.ndarray]:
    from harness.data import PreprocessSpec, preprocess, read_image

    spec = PreprocessSpec.from_dict(ULTRAFACE)
    names = ["1.jpg", "13.jpg", "24.jpg"]
    return [preprocess(read_image(realmodels_dir / "ultraface" / "images" / n), spec)[0][None] for n in names]


@pytest.mark.realmodel
@pytest.mark.parametrize("optimization", ["all", "disabled"])
@pytest.mark.parametrize("name", TWINS)
def test_ultraface_caffe_twin_matches_onnx(
    realmodels_dir: Path, ultraface_images: list[np.ndarray], name: str, optimization: str
) -> None:
    caffe = load_model(realmodels_dir / "ultraface" / "caffe" / f"{name}.prototxt")
    twin = load_model(realmodels_dir / "ultraface" / "onnx" / TWINS[name])
    assert set(caffe.output_names) == {"scores", "boxes"}
    runners = [TapRunner(m, taps="none", optimization=optimization, threads=2) for m in (caffe, twin)]
    worst = 0.0
    for x in ultraface_images:
        ours, theirs = (r.run(x) for r in runners)
        worst = max(worst, *(float(np.abs(ours[k] - theirs[k]).max()) for k in ("scores", "boxes")))
    # Measured on these 3 images: 0.0 with optimisations (onnxruntime folds the twin's BatchNorms into
    # bit-for-bit the weights the Caffe file holds); without, 2.1e-5 on `boxes` and 1.5e-6 on `scores`.
    assert worst <= 3e-5


@pytest.mark.realmodel
@pytest.mark.parametrize("name", TWINS)
def test_ultraface_shared_tensor_names(realmodels_dir: Path, ultraface_images: list[np.ndarray], name: str) -> None:
    """Every Caffe blob name is a tensor of the ONNX twin. Where the twin has Conv -> BatchNorm, the
    Caffe blob named like the Conv output holds the folded Conv+BN value (the twin's BN output);
    every other shared tensor holds the same value."""
    caffe = load_model(realmodels_dir / "ultraface" / "caffe" / f"{name}.prototxt")
    twin = load_model(realmodels_dir / "ultraface" / "onnx" / TWINS[name])
    ours = TapRunner(caffe, taps="all", threads=2)
    twin_names = {t.name for t in tensor_list(twin.proto)}
    shared = [t for t in ours.infos if t in twin_names]
    assert shared == list(ours.infos)  # all of them: RFB-320 110, slim-320 95
    bn_after = {n.input[0]: n.output[0] for n in twin.proto.graph.node if n.op_type == "BatchNormalization"}
    folded = [t for t in shared if t in bn_after]
    theirs = TapRunner(twin, taps=shared + [bn_after[t] for t in folded], threads=2)
    x = ultraface_images[0]
    a, b = ours.run(x), theirs.run(x)
    assert all(a[t].shape == b[t].shape for t in shared)
    diffs = {t: float(np.abs(a[t] - b[bn_after.get(t, t)]).max()) for t in shared}
    # Measured: 0.0 for every shared tensor, the folded ones compared with the twin's BN output
    # (1.3e-5 RFB-320 / 1.6e-5 slim-320 with onnxruntime's optimisations disabled).
    assert max(diffs.values()) <= 3e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    # Same name, different value: the twin's pre-BN conv output (measured max |diff| 0.21 to 11.1).
    assert len(folded) == {"RFB-320": 35, "slim-320": 25}[name]
    assert min(float(np.abs(a[t] - b[t]).max()) for t in folded) > 0.1
