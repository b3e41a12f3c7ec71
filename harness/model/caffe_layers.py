"""Per-layer converters (one function per Caffe layer type) and the registry of supported types.

Each converter takes the graph and the layer, emits nodes whose final outputs are ``layer.tops``, and
returns the top shapes. Caffe checks are repeated where ONNX would otherwise fail later and less
clearly. Convolution and Pooling live in ``harness.model.caffe_spatial``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.model.caffe_graph import Graph, Layer, Shape, Tensor, canonical_axis, weight_inputs
from harness.model.caffe_spatial import convolution, pooling


def _relu(g: Graph, layer: Layer) -> list[Shape]:
    slope = layer.param.relu_param.negative_slope
    x = layer.bottoms[0]
    if slope:
        g.node("LeakyRelu", [x.name], layer.tops, layer.name, alpha=slope)
    else:
        g.node("Relu", [x.name], layer.tops, layer.name)
    return [x.shape]


def _unary(op: str) -> Callable[[Graph, Layer], list[Shape]]:
    def convert(g: Graph, layer: Layer) -> list[Shape]:
        g.node(op, [layer.bottoms[0].name], layer.tops, layer.name)
        return [layer.bottoms[0].shape]

    return convert


def _split(g: Graph, layer: Layer) -> list[Shape]:
    x = layer.bottoms[0]
    for top in layer.tops:
        g.node("Identity", [x.name], [top], layer.name)
    return [x.shape] * len(layer.tops)


def _eltwise(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.eltwise_param
    shape = layer.bottoms[0].shape
    if any(b.shape != shape for b in layer.bottoms):
        raise layer.refuse(
            f"inputs have shapes {[list(b.shape) for b in layer.bottoms]}",
            expected="inputs of one shape (Caffe's Eltwise does not broadcast)",
            remedy="check the bottoms",
        )
    coeffs = list(p.coeff)
    if coeffs and (p.operation != 1 or len(coeffs) != len(layer.bottoms)):
        raise layer.refuse(
            f"{len(coeffs)} coeff values for {len(layer.bottoms)} inputs and operation {p.operation}",
            expected="coeff only with operation SUM, one per input",
            remedy="fix eltwise_param",
        )
    names = [b.name for b in layer.bottoms]
    if coeffs:
        names = [
            name if c == 1 else _scaled(g, layer, name, c, i) for i, (name, c) in enumerate(zip(names, coeffs))
        ]
    if p.operation == 0:  # PROD: ONNX Mul takes two inputs
        product = names[0]
        for i, name in enumerate(names[1:-1]):
            partial = g.fresh(f"{layer.name}/prod{i}")
            g.node("Mul", [product, name], [partial], partial)
            product = partial
        g.node("Mul", [product, names[-1]], layer.tops, layer.name)
    else:
        op = "Max" if p.operation == 2 else ("Add" if len(names) == 2 else "Sum")
        g.node(op, names, layer.tops, layer.name)
    return [shape]


def _scaled(g: Graph, layer: Layer, name: str, coeff: float, index: int) -> str:
    out = g.fresh(f"{layer.name}/coeff{index}")
    g.node("Mul", [name, g.constant(f"{layer.name}/coeff{index}_value", np.array(coeff, np.float32))], [out], out)
    return out


def _concat(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.concat_param
    if p.HasField("axis") and p.HasField("concat_dim"):
        raise layer.refuse("both axis and concat_dim are set", expected="one of them", remedy="keep axis")
    first = layer.bottoms[0].shape
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    axis = canonical_axis(layer, axis, len(first))
    rest = [s[:axis] + s[axis + 1 :] for s in (b.shape for b in layer.bottoms)]
    if any(r != rest[0] or len(b.shape) != len(first) for r, b in zip(rest, layer.bottoms)):
        raise layer.refuse(
            f"inputs of shapes {[list(b.shape) for b in layer.bottoms]} cannot be joined on axis {axis}",
            expected="equal shapes except on the concat axis",
            remedy="check the bottoms and concat_param.axis",
        )
    g.node("Concat", [b.name for b in layer.bottoms], layer.tops, layer.name, axis=axis)
    total = sum(b.shape[axis] for b in layer.bottoms)
    return [first[:axis] + (total,) + first[axis + 1 :]]


def _permute(g: Graph, layer: Layer) -> list[Shape]:
    x = layer.bottoms[0]
    order = [int(o) for o in layer.param.permute_param.order]
    if len(set(order)) != len(order) or any(o >= len(x.shape) for o in order):
        raise layer.refuse(
            f"order {order} for an input of rank {len(x.shape)}",
            expected=f"distinct axes below {len(x.shape)}",
            remedy="fix permute_param.order",
        )
    order += [a for a in range(len(x.shape)) if a not in order]  # SSD's Permute appends missing axes
    g.node("Transpose", [x.name], layer.tops, layer.name, perm=order)
    return [tuple(x.shape[a] for a in order)]


def reshape_to(g: Graph, layer: Layer, x: Tensor, shape: Shape, top: str) -> None:
    target = g.constant(f"{layer.name}/shape", np.array(shape, np.int64))
    g.node("Reshape", [x.name, target], [top], layer.name if top in layer.tops else top)


def _reshape(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.reshape_param
    x = layer.bottoms[0]
    rank = len(x.shape)
    start = p.axis if p.axis >= 0 else rank + p.axis + 1
    end = rank if p.num_axes == -1 else start + p.num_axes
    dims = [int(d) for d in p.shape.dim]
    copies_past_end = any(d == 0 and start + i >= rank for i, d in enumerate(dims))
    bad_dims = dims.count(-1) > 1 or min(dims, default=0) < -1 or copies_past_end
    if not 0 <= start <= end <= rank or p.num_axes < -1 or bad_dims:
        raise layer.refuse(
            f"shape {dims} with axis {p.axis} and num_axes {p.num_axes} on an input of rank {rank}",
            expected="at most one -1, a 0 only where the input has an axis to copy, axis/num_axes within the input",
            remedy="fix reshape_param",
        )
    middle = [x.shape[start + i] if d == 0 else d for i, d in enumerate(dims)]  # 0 copies the input dim
    known = math.prod(x.shape[:start]) * math.prod(x.shape[end:]) * math.prod(d for d in middle if d != -1)
    count = math.prod(x.shape)
    if -1 in middle:
        middle[middle.index(-1)] = count // known if known and count % known == 0 else 0
    out = x.shape[:start] + tuple(middle) + x.shape[end:]
    if math.prod(out) != count or 0 in out:
        raise layer.refuse(
            f"cannot reshape {list(x.shape)} ({count} values) to {dims}",
            expected="a shape with the same number of values",
            remedy="fix reshape_param.shape",
        )
    reshape_to(g, layer, x, out, layer.tops[0])
    return [out]


def _flatten(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.flatten_param
    x = layer.bottoms[0]
    start = canonical_axis(layer, p.axis, len(x.shape))
    end = canonical_axis(layer, p.end_axis, len(x.shape), "end_axis")
    out = x.shape[:start] + (math.prod(x.shape[start : end + 1]),) + x.shape[end + 1 :]
    reshape_to(g, layer, x, out, layer.tops[0])
    return [out]


def _softmax(g: Graph, layer: Layer) -> list[Shape]:
    x = layer.bottoms[0]  # opset >= 13 Softmax normalises one axis, like Caffe (older opsets flatten)
    axis = canonical_axis(layer, layer.param.softmax_param.axis, len(x.shape))
    g.node("Softmax", [x.name], layer.tops, layer.name, axis=axis)
    return [x.shape]


def _inner_product(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.inner_product_param
    x = layer.bottoms[0]
    axis = canonical_axis(layer, p.axis, len(x.shape))
    k, n = math.prod(x.shape[axis:]), p.num_output
    if n < 1:
        raise layer.refuse("num_output is 0", expected="num_output >= 1", remedy="set inner_product_param.num_output")
    params = weight_inputs(g, layer, (k, n) if p.transpose else (n, k), n, bias_term=p.bias_term)
    source = x.name
    if len(x.shape) != 2 or axis != 1:  # Gemm wants (M, K): Flatten(axis) is Caffe's lumping of axes
        source = g.fresh(f"{layer.name}/flatten")
        g.node("Flatten", [x.name], [source], source, axis=axis)
    out = x.shape[:axis] + (n,)
    product = layer.tops[0] if axis == 1 else g.fresh(f"{layer.name}/gemm")
    g.node("Gemm", [source, *params], [product], layer.name if axis == 1 else product, transB=0 if p.transpose else 1)
    if axis != 1:
        reshape_to(g, layer, Tensor(product, (math.prod(x.shape[:axis]), n)), out, layer.tops[0])
    return [out]


def _batch_norm(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.batch_norm_param
    x = layer.bottoms[0]
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise layer.refuse(
            "use_global_stats is false: it normalises with the statistics of each batch",
            expected="use_global_stats true or unset (Caffe's TEST-phase default)",
            remedy="set use_global_stats: true in the deploy prototxt",
        )
    if len(x.shape) < 2:
        raise layer.refuse(f"input of rank {len(x.shape)}", expected="an input of rank >= 2", remedy="reshape it")
    c = x.shape[1]
    mean, var, factor = layer.weights(("mean", (c,)), ("variance", (c,)), ("moving average factor", (1,)))
    scale = 0.0 if factor[0] == 0 else 1.0 / float(factor[0])  # Caffe stores sums; blob 2 is their weight
    inputs = [
        x.name,
        g.constant(f"{layer.name}/ones", np.ones(c, np.float32)),
        g.constant(f"{layer.name}/zeros", np.zeros(c, np.float32)),
        g.constant(f"{layer.name}/mean", (mean * scale).astype(np.float32)),
        g.constant(f"{layer.name}/variance", (var * scale).astype(np.float32)),
    ]
    g.node("BatchNormalization", inputs, layer.tops, layer.name, epsilon=p.eps)
    return [x.shape]


def _scale(g: Graph, layer: Layer) -> list[Shape]:
    p = layer.param.scale_param
    x = layer.bottoms[0]
    rank = len(x.shape)
    axis = canonical_axis(layer, p.axis, rank)
    if len(layer.bottoms) == 2:
        count = len(layer.bottoms[1].shape)
    else:
        count = rank - axis if p.num_axes == -1 else p.num_axes
    factor_shape = x.shape[axis : axis + count]
    if count < 0 or axis + count > rank or (len(layer.bottoms) == 2 and layer.bottoms[1].shape != factor_shape):
        raise layer.refuse(
            f"scale over axes [{axis}, {axis + count}) of an input of shape {list(x.shape)}",
            expected="axis/num_axes (or the second input's shape) matching the input's axes",
            remedy="fix scale_param",
        )
    broadcast = factor_shape + (1,) * (rank - axis - count)
    expected = [] if len(layer.bottoms) == 2 else [("scale", factor_shape)]
    blobs = layer.weights(*expected, *([("bias", factor_shape)] if p.bias_term else []))
    if len(layer.bottoms) == 2:
        factor = g.fresh(f"{layer.name}/factor")
        reshape_to(g, layer, layer.bottoms[1], broadcast, factor)
    else:
        factor = g.constant(f"{layer.name}/scale", blobs.pop(0).reshape(broadcast))
    product = g.fresh(f"{layer.name}/mul") if p.bias_term else layer.tops[0]
    g.node("Mul", [x.name, factor], [product], layer.name if product in layer.tops else product)
    if p.bias_term:
        bias = g.constant(f"{layer.name}/bias", blobs[0].reshape(broadcast))
        g.node("Add", [product, bias], layer.tops, layer.name)
    return [x.shape]


@dataclass(frozen=True)
class _Spec:
    convert: Callable[[Graph, Layer], list[Shape]]
    bottoms: tuple[int, int | None]  # (min, max); None = any number
    tops: tuple[int, int | None] | None = (1, 1)  # None: as many tops as bottoms


_CONVERTERS: dict[str, _Spec] = {
    "BatchNorm": _Spec(_batch_norm, (1, 1)),
    "Concat": _Spec(_concat, (1, None)),
    "Convolution": _Spec(convolution, (1, None), None),
    "Deconvolution": _Spec(convolution, (1, None), None),
    "Dropout": _Spec(_unary("Identity"), (1, 1)),
    "Eltwise": _Spec(_eltwise, (2, None)),
    "Flatten": _Spec(_flatten, (1, 1)),
    "InnerProduct": _Spec(_inner_product, (1, 1)),
    "Permute": _Spec(_permute, (1, 1)),
    "Pooling": _Spec(pooling, (1, 1)),
    "ReLU": _Spec(_relu, (1, 1)),
    "Reshape": _Spec(_reshape, (1, 1)),
    "Scale": _Spec(_scale, (1, 2)),
    "Sigmoid": _Spec(_unary("Sigmoid"), (1, 1)),
    "Softmax": _Spec(_softmax, (1, 1)),
    "Split": _Spec(_split, (1, 1), (1, None)),
    "TanH": _Spec(_unary("Tanh"), (1, 1)),
}
#: Caffe layer types ``caffe_to_onnx`` converts.
SUPPORTED_LAYER_TYPES = ("Input", *sorted(_CONVERTERS))


def convert_layer(g: Graph, layer: Layer) -> list[Shape]:
    """Convert one layer of a registered type (not ``Input``, which the driver handles): its bottom
    and top counts are checked first, then its converter emits its nodes and gives its top shapes."""
    _check_arity(layer)
    return _CONVERTERS[layer.param.type].convert(g, layer)


def _check_arity(layer: Layer) -> None:
    spec = _CONVERTERS[layer.param.type]
    n_bottom, n_top = len(layer.bottoms), len(layer.tops)
    tops = spec.tops if spec.tops is not None else (n_bottom, n_bottom)
    if not (_within(n_bottom, spec.bottoms) and _within(n_top, tops)):
        raise layer.refuse(
            f"{n_bottom} bottom(s) and {n_top} top(s)",
            expected=f"{_count(spec.bottoms)} bottom(s) and {_count(spec.tops) if spec.tops else 'one top per bottom'}",
            remedy="fix the layer's bottom/top lists",
        )


def _within(n: int, bounds: tuple[int, int | None]) -> bool:
    return n >= bounds[0] and (bounds[1] is None or n <= bounds[1])


def _count(bounds: tuple[int, int | None]) -> str:
    low, high = bounds
    return f"{low}" if low == high else f"{low} or more" if high is None else f"{low} to {high}"

