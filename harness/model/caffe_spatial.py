"""Converters of Caffe's sliding-window layers: Convolution, Deconvolution and Pooling.

Here Caffe and ONNX differ most: Caffe's own rules for kernel/pad/stride fields, and Caffe's pooled
output size and AVE divisor, which ONNX reaches only with the right choice of ceil mode and padding.
Each converter follows the contract of ``harness.model.caffe_layers``.
"""

from __future__ import annotations

import numpy as np

from harness.model.caffe_graph import Graph, Layer, Shape, Tensor, weight_inputs


def _conv_dims(layer: Layer, repeated: str, prefix: str | None, n: int, default: int) -> list[int]:
    """Caffe's rule for kernel/pad/stride/dilation: ``<prefix>_h`` and ``<prefix>_w`` (2-D only, never
    with the repeated field), else the repeated field with no value (default), one, or one per axis."""
    p = layer.param.convolution_param
    values = [int(v) for v in getattr(p, repeated)]
    if prefix and (p.HasField(f"{prefix}_h") or p.HasField(f"{prefix}_w")):
        if values or n != 2:
            raise layer.refuse(
                f"{prefix}_h/{prefix}_w given with {repeated} or for {n} spatial axes",
                expected=f"either {repeated} or {prefix}_h and {prefix}_w (2-D only)",
                remedy=f"keep one form of {repeated}",
            )
        return [getattr(p, f"{prefix}_h"), getattr(p, f"{prefix}_w")]
    if len(values) not in (0, 1, n):
        raise layer.refuse(
            f"{repeated} has {len(values)} values for {n} spatial axes",
            expected=f"1 or {n} values",
            remedy=f"give one {repeated} or one per spatial axis",
        )
    return values * n if len(values) == 1 else values or [default] * n


def convolution(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.convolution_param
    transposed = layer.param.type == "Deconvolution"
    rank = len(layer.bottoms[0].shape)
    n = rank - 2
    if p.axis != 1 or n < 1:
        raise layer.refuse(
            f"channel axis {p.axis} on an input of rank {rank}",
            expected="axis 1 (N, C, spatial...) and at least one spatial axis",
            remedy="reshape the input to NCHW",
        )
    kernel = _conv_dims(layer, "kernel_size", "kernel", n, 0)
    pads = _conv_dims(layer, "pad", "pad", n, 0)
    strides = _conv_dims(layer, "stride", "stride", n, 1)
    dilations = _conv_dims(layer, "dilation", None, n, 1)
    channels, group, num_output = layer.bottoms[0].shape[1], p.group, p.num_output
    if min(kernel + strides + dilations) < 1 or num_output < 1 or group < 1 or channels % group or num_output % group:
        raise layer.refuse(
            f"kernel {kernel}, stride {strides}, dilation {dilations}, num_output {num_output}, group {group} "
            f"on {channels} input channels",
            expected="kernel, stride, dilation and num_output >= 1, and group dividing channels and num_output",
            remedy="fix convolution_param",
        )
    w_shape = (channels, num_output // group, *kernel) if transposed else (num_output, channels // group, *kernel)
    inputs = weight_inputs(g, layer, w_shape, num_output, bias_term=p.bias_term)
    shapes = []
    for bottom, top in zip(layer.bottoms, layer.tops):
        spatial = []
        for size, k, pad, s, d in zip(bottom.shape[2:], kernel, pads, strides, dilations):
            extent = d * (k - 1) + 1
            spatial.append(s * (size - 1) + extent - 2 * pad if transposed else (size + 2 * pad - extent) // s + 1)
        if min(spatial) < 1 or bottom.shape[1] != channels:
            raise layer.refuse(
                f"input {bottom.name!r} of shape {list(bottom.shape)} gives output size {spatial}",
                expected=f"{channels} channels and a positive output size",
                remedy="check the kernel, pad and stride against the input shape",
            )
        g.node(
            "ConvTranspose" if transposed else "Conv",
            [bottom.name, *inputs],
            [top],
            layer.name,
            kernel_shape=kernel,
            pads=pads + pads,
            strides=strides,
            dilations=dilations,
            group=group,
        )
        shapes.append((bottom.shape[0], num_output, *spatial))
    return shapes


def pooling(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.pooling_param
    x = layer.bottoms[0]
    if len(x.shape) != 4 or p.pool == 2:
        raise layer.refuse(
            f"{'STOCHASTIC pooling' if p.pool == 2 else f'input of rank {len(x.shape)}'}",
            expected="MAX or AVE pooling of a 4-D (N, C, H, W) input",
            remedy="use MAX or AVE pooling",
        )
    pads = [p.pad_h, p.pad_w] if p.HasField("pad_h") or p.HasField("pad_w") else [p.pad] * 2
    strides = [p.stride_h, p.stride_w] if p.HasField("stride_h") or p.HasField("stride_w") else [p.stride] * 2
    has_kernel = [p.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w")]
    if p.global_pooling:
        if any(has_kernel) or any(pads) or strides != [1, 1]:
            raise layer.refuse(
                "global_pooling with a kernel size, padding or stride",
                expected="global_pooling alone (Caffe refuses the combination too)",
                remedy="remove kernel_size/pad/stride from pooling_param",
            )
        g.node("GlobalMaxPool" if p.pool == 0 else "GlobalAveragePool", [x.name], layer.tops, layer.name)
        return [x.shape[:2] + (1, 1)]
    if has_kernel[0] == (has_kernel[1] or has_kernel[2]):
        raise layer.refuse(
            "the kernel size is missing or given twice",
            expected="kernel_size, or kernel_h and kernel_w",
            remedy="fix pooling_param",
        )
    kernel = [p.kernel_size] * 2 if has_kernel[0] else [p.kernel_h, p.kernel_w]
    if min(kernel) < 1 or min(strides) < 1 or any(pad >= k for pad, k in zip(pads, kernel)):
        raise layer.refuse(
            f"kernel {kernel}, stride {strides}, pad {pads}",
            expected="kernel and stride >= 1 and pad < kernel",
            remedy="fix pooling_param",
        )
    sizes = x.shape[2:]
    ceil = p.round_mode == 0
    out = [_caffe_pooled_size(n, k, s, pad, ceil=ceil) for n, k, s, pad in zip(sizes, kernel, strides, pads)]
    _emit_pooling(g, layer, x, kernel, strides, pads, out)
    return [x.shape[:2] + tuple(out)]


def _caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, *, ceil: bool) -> int:
    """PoolingLayer::Reshape: ceil (or floor) division, then drop a last window that would start in the padding."""
    span = size + 2 * pad - kernel
    pooled = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _emit_pooling(
    g: Graph, layer: Layer, x: Tensor, kernel: list[int], strides: list[int], pads: list[int], out: list[int]
) -> None:
    """Pooling with Caffe's output size and divisor, in the plainest ONNX form that gives both.

    Caffe's AVE divisor counts the zero padding but not the ceil-mode overhang past it. onnxruntime's
    ``ceil_mode=1`` with ``count_include_pad=1`` does exactly that (measured), so the usual case is
    one node with ``ceil_mode=1``. When Caffe drops a last window that would start in the padding,
    ONNX shape inference (opset 13) still counts it (onnxruntime does not): then floor mode gives
    Caffe's size; if one axis needs floor and the other ceil, the overhang becomes explicit end
    padding, and an AVE pool with padding first gets its zero padding from a Pad node.
    """
    is_max = layer.param.pooling_param.pool == 0
    op = "MaxPool" if is_max else "AveragePool"
    sizes = x.shape[2:]
    spans = [n + 2 * pad - k for n, pad, k in zip(sizes, pads, kernel)]
    ceil_out = [-(-span // s) + 1 for span, s in zip(spans, strides)]
    floor_out = [span // s + 1 for span, s in zip(spans, strides)]
    attrs: dict[str, object] = {"kernel_shape": kernel, "strides": strides}
    include_pad = {} if is_max else {"count_include_pad": int(any(pads))}
    if out == ceil_out or out == floor_out:
        ceil_mode = int(out == ceil_out)
        g.node(op, [x.name], layer.tops, layer.name, pads=pads + pads, ceil_mode=ceil_mode, **attrs, **include_pad)
        return
    extra = [max(0, (o - 1) * s + k - (n + 2 * pad)) for o, s, k, n, pad in zip(out, strides, kernel, sizes, pads)]
    source = x.name
    if not is_max and any(pads):
        source = g.fresh(f"{layer.name}/pad")
        zeros = g.constant(f"{layer.name}/pads", np.array([0, 0, *pads, 0, 0, *pads], np.int64))
        g.node("Pad", [x.name, zeros], [source], source)
        pads = [0, 0]
        include_pad = {"count_include_pad": 0}
    ends = [pad + e for pad, e in zip(pads, extra)]
    g.node(op, [source], layer.tops, layer.name, pads=pads + ends, **attrs, **include_pad)

