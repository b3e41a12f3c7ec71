"""Convert a Caffe model (deploy ``.prototxt`` + ``.caffemodel``) to ONNX with Caffe's exact semantics.

Sophon BM1684 (bmnetc) and HiSilicon NNIE deploy Caffe models, and their users usually hold a
Caffe twin of an ONNX model. Converting the Caffe twin lets the rest of the harness (taps,
quantisation, comparison) run on it unchanged. OpenCV 5 no longer reads Caffe, so this is our own
reader: the needed subset of ``caffe.proto`` is declared in ``caffe_proto`` with Caffe's real field
numbers and types and built into message classes at run time (no protoc, no generated ``_pb2``).

Parsing follows what Caffe accepts. Real prototxts carry fields this subset does not declare
(``transform_param`` of a TRAIN-only data layer, a fork's ``norm_param``...), so the text is parsed
with unknown fields allowed. An unknown field is refused only inside a layer this importer
converts: there it is a typo or a fork's extension (``ceil_mode`` in ``pooling_param``) whose
meaning would otherwise be silently dropped. Layers are filtered by their include/exclude rules
for the TEST phase, as ``caffe.Net`` does when deploying. Weights are matched by layer name, from a
current or a V1 (``layers``) caffemodel, with Caffe's checks of blob count and shape; a V1
prototxt is refused (Caffe's ``upgrade_net_proto_text`` converts it).

Tensor names are Caffe blob names and node names are Caffe layer names, so golden dumps and
tables line up with the Caffe tools. Caffe rewrites blobs in place (``ReLU`` with top == bottom);
ONNX needs a new name for every value. Rule: the LAST layer writing a blob produces the tensor
named after the blob (the value Caffe leaves in it, which later layers and Caffe's own dumps
see); each earlier version is named ``"<blob>/<layer that wrote it>"``. Exception: a graph input
keeps the blob name, so it is fed by its Caffe name; an in-place layer on it writes
``"<blob>/<layer>"``. Helper tensors of layers that need several ONNX nodes are named
``"<layer>/<what>"``. Graph outputs are the blobs' final values that no later layer reads, in
the order they are produced.

Layout: ``caffe_proto`` holds the schema subset and reads the two files; ``caffe_graph`` the ONNX
graph under construction and a layer's view of it (with Caffe's weight checks); ``caffe_layers``
(and ``caffe_spatial`` for Convolution/Pooling) one converter per layer type and the registry. This
module walks the net: TEST-phase filtering, refusals over the whole net, blob naming, graph inputs
and outputs, and the final check of ONNX's inferred shapes against Caffe's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import onnx
from google.protobuf.message import Message
from onnx import TensorProto, helper

from harness.errors import ConfigError, ModelConversionError, ModelFormatError
from harness.model.caffe_graph import Graph, Layer, Shape, Tensor, unique
from harness.model.caffe_layers import SUPPORTED_LAYER_TYPES, convert_layer
from harness.model.caffe_proto import (
    UnknownField,
    caffemodel_beside,
    existing_file,
    message_class,
    read_caffemodel,
    read_prototxt,
    weights_by_layer,
)

__all__ = ["SUPPORTED_LAYER_TYPES", "caffe_to_onnx", "caffemodel_beside", "message_class"]

log = logging.getLogger(__name__)


def caffe_to_onnx(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None = None,
    *,
    opset: int = 13,
) -> onnx.ModelProto:
    """Convert a Caffe deploy prototxt and its weights to a checked, shape-inferred ONNX model.

    ``caffemodel=None`` takes ``<prototxt stem>.caffemodel`` beside the prototxt. Names follow the
    module's rule (tensors = blob names, the last in-place writer keeps the blob's name; nodes =
    layer names). ``opset`` must be >= 13, where Softmax works on one axis as Caffe's does.
    """
    newest = onnx.defs.onnx_opset_version()
    if not 13 <= opset <= newest:
        raise ConfigError(
            f"Got opset {opset} for the Caffe import",
            expected=f"an opset in [13, {newest}] (below 13 Softmax flattens its input, unlike Caffe)",
            remedy="use opset=13",
        )
    proto_path = existing_file(Path(prototxt), "prototxt", "check the path of the .prototxt")
    beside = caffemodel_beside(proto_path)
    weights_path = Path(caffemodel) if caffemodel is not None else beside
    existing_file(weights_path, "caffemodel", f"put the weights beside the prototxt as {beside.name} or pass caffemodel=")
    net, unknown = read_prototxt(proto_path)
    weights = weights_by_layer(read_caffemodel(weights_path))
    layers = _active_layers(net, proto_path)
    if not layers:
        raise ModelFormatError(
            f"Caffe prototxt {proto_path} has no layers (for the TEST phase)",
            expected="a deploy prototxt with layer { ... } blocks",
            remedy="check that this is the network definition, not a solver prototxt",
        )
    _refuse_unsupported(layers, proto_path)
    _refuse_unknown_fields(unknown, layers, proto_path)
    graph, inputs, outputs, shapes = _convert(net, layers, weights, proto_path, weights_path)
    model = _finish(graph, inputs, outputs, name=net.name or proto_path.stem, opset=opset, source=proto_path)
    _check_shapes(model, shapes)
    return model


def _refuse_unsupported(layers: list[tuple[int, Message]], path: Path) -> None:
    bad = [f"{lp.name!r} ({lp.type or 'no type'})" for _, lp in layers if lp.type not in SUPPORTED_LAYER_TYPES]
    if bad:
        raise ModelConversionError(
            f"Caffe prototxt {path} has {len(bad)} layer(s) of unsupported type: {', '.join(bad[:8])}"
            + (" ..." if len(bad) > 8 else ""),
            expected=f"only these layer types: {', '.join(SUPPORTED_LAYER_TYPES)}",
            remedy="remove post-processing layers (e.g. PriorBox, DetectionOutput) from the deploy prototxt, "
            "or convert the model to ONNX with the framework it was trained in",
        )


def _refuse_unknown_fields(unknown: list[UnknownField], layers: list[tuple[int, Message]], path: Path) -> None:
    converted = {index: layer for index, layer in layers}
    bad = [f"layer {converted[u.layer_index].name!r}: {u.path}" for u in unknown if u.layer_index in converted]
    for u in unknown:
        if u.layer_index not in converted:
            log.debug("%s: ignoring field %s of a layer that is not converted (or of the net)", path, u.path)
    if bad:
        raise ModelConversionError(
            f"Caffe prototxt {path} sets fields unknown to caffe.proto in converted layers: {'; '.join(bad[:5])}",
            expected="only caffe.proto's fields (a fork's extra option could change what the layer computes)",
            remedy="remove the field if it is a typo or has its default meaning; otherwise the model needs that fork",
        )

def _active_layers(net: Message, path: Path) -> list[tuple[int, Message]]:
    """(index, layer) of the layers ``caffe.Net`` keeps in the TEST phase (Net::FilterNet)."""
    level, stages = net.state.level, set(net.state.stage)
    kept = []
    for index, layer in enumerate(net.layer):
        if len(layer.include) and len(layer.exclude):
            raise ModelFormatError(
                f"Layer {layer.name!r} in {path} has both include and exclude rules",
                expected="include rules or exclude rules, not both (Caffe refuses this too)",
                remedy="keep one kind of rule",
            )
        if len(layer.include):
            keep = any(_meets(rule, level, stages) for rule in layer.include)
        else:
            keep = not any(_meets(rule, level, stages) for rule in layer.exclude)
        if keep:
            kept.append((index, layer))
    return kept


def _meets(rule: Message, level: int, stages: set[str]) -> bool:
    test_phase = 1
    return (
        (not rule.HasField("phase") or rule.phase == test_phase)
        and (not rule.HasField("min_level") or level >= rule.min_level)
        and (not rule.HasField("max_level") or level <= rule.max_level)
        and all(s in stages for s in rule.stage)
        and not any(s in stages for s in rule.not_stage)
    )


def _convert(
    net: Message,
    layers: list[tuple[int, Message]],
    weights: dict[str, Sequence[Message]],
    proto_path: Path,
    weights_path: Path,
) -> tuple[Graph, list[onnx.ValueInfoProto], list[onnx.ValueInfoProto], dict[str, Shape]]:
    """Walk the layers in order, keeping the current ONNX tensor of every Caffe blob.

    Returns the graph, its inputs and outputs, and Caffe's shape of every top (for ``_check_shapes``).
    """
    ordered = [layer for _, layer in layers]
    net_inputs = _net_level_inputs(net, proto_path)
    names = _output_names(ordered, set(net_inputs))
    blobs = {name for layer in ordered for name in (*layer.top, *layer.bottom)} | set(net_inputs)
    graph = Graph(used=set(blobs) | {n for layer_names in names for n in layer_names})
    current: dict[str, Tensor] = {name: Tensor(name, shape) for name, shape in net_inputs.items()}
    inputs = [_float_value(n, s) for n, s in net_inputs.items()]
    consumed: set[str] = set()
    produced: list[Tensor] = []
    for layer, tops in zip(ordered, names):
        bottoms = [_bottom(current, layer, i, b, proto_path) for i, b in enumerate(layer.bottom)]
        consumed.update(b.name for b in bottoms)
        if layer.type == "Input":
            shapes = _input_shapes(layer, proto_path)
            inputs += [_float_value(n, s) for n, s in zip(tops, shapes)]
        else:
            source = str(weights_path) if layer.name in weights else f"{weights_path}, which has no layer of that name"
            view = Layer(layer, bottoms, tops, weights.get(layer.name, layer.blobs), source)
            shapes = convert_layer(graph, view)
        for blob, onnx_name, shape in zip(layer.top, tops, shapes):
            current[blob] = Tensor(onnx_name, tuple(int(d) for d in shape))
            if layer.type != "Input":
                produced.append(current[blob])
    unread = [t for t in produced if t.name not in consumed]
    outputs = [_float_value(t.name, t.shape) for t in unread]
    return graph, inputs, outputs, {t.name: t.shape for t in produced}


def _float_value(name: str, shape: Shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _bottom(current: dict[str, Tensor], layer: Message, index: int, blob: str, path: Path) -> Tensor:
    if blob not in current:
        raise ModelConversionError(
            f"Layer {layer.name!r} ({layer.type}) reads bottom {index} {blob!r}, which no earlier layer of {path} makes",
            expected="every bottom to be an input or the top of an earlier layer (Caffe: 'Unknown bottom blob')",
            remedy="check the spelling of the bottom and the order of the layers",
        )
    return current[blob]



def _output_names(layers: list[Message], graph_inputs: set[str]) -> list[list[str]]:
    """ONNX names of every layer's tops: the last writer of a blob keeps its name (see module doc)."""
    writers: dict[str, list[tuple[int, int]]] = {}
    for li, layer in enumerate(layers):
        for ti, blob in enumerate(layer.top):
            in_place = ti < len(layer.bottom) and layer.bottom[ti] == blob
            if (blob in writers or blob in graph_inputs) and not in_place:
                raise ModelConversionError(
                    f"Blob {blob!r} is produced again by layer {layer.name!r} ({layer.type}) without being its bottom",
                    expected="each blob produced once, or rewritten in place (top i == bottom i)",
                    remedy="rename the top (Caffe refuses this too: 'Top blob produced by multiple sources')",
                )
            writers.setdefault(blob, []).append((li, ti))
    used = set(writers) | graph_inputs
    names = [[""] * len(layer.top) for layer in layers]
    for blob, writes in writers.items():
        if blob in graph_inputs:
            keeper = None  # the graph input itself holds the name
        else:
            keeper = writes[0] if layers[writes[0][0]].type == "Input" else writes[-1]
        for li, ti in writes:
            names[li][ti] = blob if (li, ti) == keeper else unique(f"{blob}/{layers[li].name}", used)
    return names


def _net_level_inputs(net: Message, path: Path) -> dict[str, Shape]:
    """Inputs declared the old way: ``input`` with ``input_shape`` or 4 ``input_dim`` each."""
    names = list(net.input)
    if len(net.input_shape) == len(names):
        return {n: tuple(int(d) for d in s.dim) for n, s in zip(names, net.input_shape)}
    if len(net.input_dim) == 4 * len(names):
        dims = [int(d) for d in net.input_dim]
        return {n: tuple(dims[4 * i : 4 * i + 4]) for i, n in enumerate(names)}
    raise ModelFormatError(
        f"Caffe prototxt {path} declares inputs {names} with {len(net.input_shape)} input_shape "
        f"and {len(net.input_dim)} input_dim values",
        expected="one input_shape per input, or four input_dim values per input",
        remedy="declare the input with an Input layer: input_param { shape { dim: 1 dim: 3 dim: H dim: W } }",
    )


def _input_shapes(layer: Message, path: Path) -> list[Shape]:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
    if len(shapes) == 1:
        shapes *= len(layer.top)
    if len(shapes) != len(layer.top) or any(not s or min(s) < 1 for s in shapes):
        raise ModelConversionError(
            f"Input layer {layer.name!r} in {path} gives {len(layer.input_param.shape)} shape(s) "
            f"for {len(layer.top)} top(s): {shapes}",
            expected="one shape for all tops or one per top, with every dimension >= 1",
            remedy="add input_param { shape { dim: 1 dim: 3 dim: H dim: W } }",
        )
    return shapes


def _finish(
    graph: Graph,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    name: str,
    opset: int,
    source: Path,
) -> onnx.ModelProto:
    onnx_graph = helper.make_graph(graph.nodes, name, inputs, outputs, initializer=graph.initializers)
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="quant-harness caffe importer",
        doc_string=f"Converted from Caffe {source.name}",
    )
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model, full_check=True)  # an importer bug, not a user error, if this fails
    return model


def _check_shapes(model: onnx.ModelProto, caffe_shapes: dict[str, Shape]) -> None:
    """ONNX shape inference must agree with Caffe's shape of every top; a mismatch is an importer bug."""
    graph = model.graph
    for info in [*graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        inferred = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        expected = caffe_shapes.get(info.name)
        if expected is not None and inferred != expected:
            raise RuntimeError(f"caffe import bug: {info.name!r} has Caffe shape {expected}, ONNX infers {inferred}")
