"""Convert a Caffe model (deploy ``.prototxt`` + ``.caffemodel``) to ONNX with Caffe's exact semantics.

Sophon BM1684 (bmnetc) and HiSilicon NNIE deploy Caffe models, and their users usually hold a
Caffe twin of an ONNX model. Converting the Caffe twin lets the rest of the harness (taps,
quantisation, comparison) run on it unchanged. OpenCV 5 no longer reads Caffe, so this is our own
reader: the needed subset of ``caffe.proto`` is declared below with Caffe's real field numbers and
types and built into message classes at run time (no protoc, no generated ``_pb2``).

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
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from onnx import TensorProto, helper, numpy_helper

from harness.errors import ConfigError, ModelConversionError, ModelFormatError, ModelNotFoundError

log = logging.getLogger(__name__)

# --- the caffe.proto subset ---------------------------------------------------------------------
# The messages this importer needs, in proto syntax with caffe.proto's field names, numbers, types and
# defaults (BVLC master; PermuteParameter = 202 as in SSD's fork), so each line can be checked against
# caffe.proto: only what the converter reads or deploy prototxts of the converted layer types carry.
# V1LayerParameter keeps just what hands a V1 caffemodel's weights over by layer name.
_CAFFE_PROTO_SUBSET = """
enum Phase { TRAIN = 0; TEST = 1; }
message BlobShape {
  repeated int64 dim = 1 [packed = true];
}
message BlobProto {
  optional BlobShape shape = 7;
  repeated float data = 5 [packed = true];
  repeated float diff = 6 [packed = true];
  repeated double double_data = 8 [packed = true];
  repeated double double_diff = 9 [packed = true];
  optional int32 num = 1 [default = 0];
  optional int32 channels = 2 [default = 0];
  optional int32 height = 3 [default = 0];
  optional int32 width = 4 [default = 0];
}
message FillerParameter {
  enum VarianceNorm { FAN_IN = 0; FAN_OUT = 1; AVERAGE = 2; }
  optional string type = 1 [default = 'constant'];
  optional float value = 2 [default = 0];
  optional float min = 3 [default = 0];
  optional float max = 4 [default = 1];
  optional float mean = 5 [default = 0];
  optional float std = 6 [default = 1];
  optional int32 sparse = 7 [default = -1];
  optional VarianceNorm variance_norm = 8 [default = FAN_IN];
}
message NetParameter {
  optional string name = 1;
  repeated string input = 3;
  repeated BlobShape input_shape = 8;
  repeated int32 input_dim = 4;
  optional bool force_backward = 5 [default = false];
  optional NetState state = 6;
  optional bool debug_info = 7 [default = false];
  repeated LayerParameter layer = 100;
  repeated V1LayerParameter layers = 2;
}
message NetState {
  optional Phase phase = 1 [default = TEST];
  optional int32 level = 2 [default = 0];
  repeated string stage = 3;
}
message NetStateRule {
  optional Phase phase = 1;
  optional int32 min_level = 2;
  optional int32 max_level = 3;
  repeated string stage = 4;
  repeated string not_stage = 5;
}
message ParamSpec {
  enum DimCheckMode { STRICT = 0; PERMISSIVE = 1; }
  optional string name = 1;
  optional DimCheckMode share_mode = 2;
  optional float lr_mult = 3 [default = 1.0];
  optional float decay_mult = 4 [default = 1.0];
}
message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  repeated string bottom = 3;
  repeated string top = 4;
  optional Phase phase = 10;
  repeated float loss_weight = 5;
  repeated ParamSpec param = 6;
  repeated BlobProto blobs = 7;
  repeated bool propagate_down = 11;
  repeated NetStateRule include = 8;
  repeated NetStateRule exclude = 9;
  optional BatchNormParameter batch_norm_param = 139;
  optional ConcatParameter concat_param = 104;
  optional ConvolutionParameter convolution_param = 106;
  optional DropoutParameter dropout_param = 108;
  optional EltwiseParameter eltwise_param = 110;
  optional FlattenParameter flatten_param = 135;
  optional InnerProductParameter inner_product_param = 117;
  optional InputParameter input_param = 143;
  optional PermuteParameter permute_param = 202;
  optional PoolingParameter pooling_param = 121;
  optional ReLUParameter relu_param = 123;
  optional ReshapeParameter reshape_param = 133;
  optional ScaleParameter scale_param = 142;
  optional SigmoidParameter sigmoid_param = 124;
  optional SoftmaxParameter softmax_param = 125;
  optional TanHParameter tanh_param = 127;
}
message V1LayerParameter {
  optional string name = 4;
  repeated BlobProto blobs = 6;
}
message BatchNormParameter {
  optional bool use_global_stats = 1;
  optional float moving_average_fraction = 2 [default = 0.999];
  optional float eps = 3 [default = 1e-5];
}
message ConcatParameter {
  optional int32 axis = 2 [default = 1];
  optional uint32 concat_dim = 1 [default = 1];
}
message ConvolutionParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  repeated uint32 pad = 3;
  repeated uint32 kernel_size = 4;
  repeated uint32 stride = 6;
  repeated uint32 dilation = 18;
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_h = 11;
  optional uint32 kernel_w = 12;
  optional uint32 stride_h = 13;
  optional uint32 stride_w = 14;
  optional uint32 group = 5 [default = 1];
  optional FillerParameter weight_filler = 7;
  optional FillerParameter bias_filler = 8;
  optional Engine engine = 15 [default = DEFAULT];
  optional int32 axis = 16 [default = 1];
  optional bool force_nd_im2col = 17 [default = false];
}
message DropoutParameter {
  optional float dropout_ratio = 1 [default = 0.5];
}
message EltwiseParameter {
  enum EltwiseOp { PROD = 0; SUM = 1; MAX = 2; }
  optional EltwiseOp operation = 1 [default = SUM];
  repeated float coeff = 2;
  optional bool stable_prod_grad = 3 [default = true];
}
message FlattenParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 end_axis = 2 [default = -1];
}
message InnerProductParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  optional FillerParameter weight_filler = 3;
  optional FillerParameter bias_filler = 4;
  optional int32 axis = 5 [default = 1];
  optional bool transpose = 6 [default = false];
}
message InputParameter {
  repeated BlobShape shape = 1;
}
message PermuteParameter {
  repeated uint32 order = 1;
}
message PoolingParameter {
  enum PoolMethod { MAX = 0; AVE = 1; STOCHASTIC = 2; }
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  enum RoundMode { CEIL = 0; FLOOR = 1; }
  optional PoolMethod pool = 1 [default = MAX];
  optional uint32 pad = 4 [default = 0];
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_size = 2;
  optional uint32 kernel_h = 5;
  optional uint32 kernel_w = 6;
  optional uint32 stride = 3 [default = 1];
  optional uint32 stride_h = 7;
  optional uint32 stride_w = 8;
  optional Engine engine = 11 [default = DEFAULT];
  optional bool global_pooling = 12 [default = false];
  optional RoundMode round_mode = 13 [default = CEIL];
}
message ReLUParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional float negative_slope = 1 [default = 0];
  optional Engine engine = 2 [default = DEFAULT];
}
message ReshapeParameter {
  optional BlobShape shape = 1;
  optional int32 axis = 2 [default = 0];
  optional int32 num_axes = 3 [default = -1];
}
message ScaleParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 num_axes = 2 [default = 1];
  optional FillerParameter filler = 3;
  optional bool bias_term = 4 [default = false];
  optional FillerParameter bias_filler = 5;
}
message SigmoidParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}
message SoftmaxParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
  optional int32 axis = 2 [default = 1];
}
message TanHParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}
"""

_FD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _FD.TYPE_STRING,
    "bool": _FD.TYPE_BOOL,
    "float": _FD.TYPE_FLOAT,
    "double": _FD.TYPE_DOUBLE,
    "int32": _FD.TYPE_INT32,
    "int64": _FD.TYPE_INT64,
    "uint32": _FD.TYPE_UINT32,
}
_SCHEMA_FILE = "harness/caffe_subset.proto"
_ENUM_LINE = re.compile(r"enum (\w+) \{ (.*) \}")
_FIELD_LINE = re.compile(r"(optional|repeated) (\w+) (\w+) = (\d+)(?: \[(.*)\])?;")


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``_CAFFE_PROTO_SUBSET`` as a proto2 file in package ``caffe``: the few proto lines it uses,
    read line by line (a message, a one-line enum, a field with [packed]/[default] options, a brace)."""
    proto = descriptor_pb2.FileDescriptorProto(name=_SCHEMA_FILE, package="caffe", syntax="proto2")
    message: descriptor_pb2.DescriptorProto | None = None
    fields: list[tuple[descriptor_pb2.DescriptorProto, list[str]]] = []
    for line in (raw.strip() for raw in _CAFFE_PROTO_SUBSET.strip().splitlines()):
        if line.startswith("message "):
            message = proto.message_type.add(name=line.split()[1])
        elif line == "}":
            message = None
        elif enum := _ENUM_LINE.fullmatch(line):
            owner = message.enum_type if message is not None else proto.enum_type
            values = [v.split(" = ") for v in enum.group(2).rstrip(";").split("; ")]
            owner.add(name=enum.group(1)).value.extend(
                descriptor_pb2.EnumValueDescriptorProto(name=n, number=int(v)) for n, v in values
            )
        else:
            match = _FIELD_LINE.fullmatch(line)
            assert match is not None and message is not None, f"unreadable schema line: {line}"
            fields.append((message, list(match.groups())))
    enums = {e.name for e in proto.enum_type}
    for message, (label, type_name, name, number, options) in fields:
        f = message.field.add(name=name, number=int(number))
        f.label = _FD.LABEL_REPEATED if label == "repeated" else _FD.LABEL_OPTIONAL
        if type_name in _SCALARS:
            f.type = _SCALARS[type_name]
        elif type_name in {e.name for e in message.enum_type}:
            f.type, f.type_name = _FD.TYPE_ENUM, f".caffe.{message.name}.{type_name}"
        else:
            f.type = _FD.TYPE_ENUM if type_name in enums else _FD.TYPE_MESSAGE
            f.type_name = f".caffe.{type_name}"
        for key, value in (o.split(" = ") for o in (options.split(", ") if options else [])):
            if key == "packed":
                f.options.packed = value == "true"
            else:
                f.default_value = value.strip("'")
    return proto


@functools.cache
def _message_classes() -> dict[str, type[Message]]:
    # A private pool: a real caffe_pb2 imported elsewhere in the process cannot clash with ours.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    messages = pool.FindFileByName(_SCHEMA_FILE).message_types_by_name
    return {name: message_factory.GetMessageClass(desc) for name, desc in messages.items()}


def message_class(name: str) -> type[Message]:
    """The run-time class of caffe message ``name`` (e.g. ``"NetParameter"``), for writing test nets."""
    return _message_classes()[name]


# --- reading files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _UnknownField:
    layer_index: int | None  # position among the prototxt's ``layer`` blocks; None outside them
    path: str  # dotted path inside the layer (or the net), e.g. "pooling_param.ceil_mode"


def caffemodel_beside(prototxt: str | os.PathLike[str]) -> Path:
    """The weights file Caffe users keep next to a prototxt: same stem, suffix ``.caffemodel``."""
    return Path(prototxt).with_suffix(".caffemodel")


def _existing_file(path: Path, what: str, remedy: str) -> Path:
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise ModelNotFoundError(f"Caffe {what} {path} {state}", expected=f"a Caffe {what} file", remedy=remedy)
    return path


def _read_prototxt(path: Path) -> tuple[Message, list[_UnknownField]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError(
            f"Caffe prototxt {path} is not text (byte {exc.start} is not UTF-8)",
            expected="a NetParameter in protobuf text format (a deploy .prototxt)",
            remedy="check that prototxt and caffemodel were not swapped",
        ) from exc
    net = message_class("NetParameter")()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelFormatError(
            f"Cannot parse Caffe prototxt {path} at line {exc.GetLine()}, column {exc.GetColumn()}: {exc}",
            expected="a NetParameter in protobuf text format, as caffe.proto defines it",
            remedy=f"fix the prototxt at line {exc.GetLine()}",
        ) from exc
    if len(net.layers):
        raise ModelConversionError(
            f"Caffe prototxt {path} uses the legacy V1 `layers` field ({len(net.layers)} entries)",
            expected="a current prototxt with `layer { ... }` blocks",
            remedy="upgrade it with Caffe's tool: upgrade_net_proto_text OLD.prototxt NEW.prototxt",
        )
    return net, _unknown_fields(text, net.DESCRIPTOR)


def _unknown_fields(text: str, root: Descriptor) -> list[_UnknownField]:
    """Every field of ``text`` that ``root``'s schema does not declare (not below unknown ones).

    The text already parsed, so this walk only tracks nesting; it exists because text_format
    skips unknown fields without saying which.
    """
    tokens = text_format.Tokenizer(text.splitlines())
    stack: list[tuple[Descriptor | None, str]] = [(root, "")]
    layer_index: int | None = None
    layer_count = 0
    found: list[_UnknownField] = []
    while not tokens.AtEnd():
        if tokens.TryConsume("}") or tokens.TryConsume(">"):
            stack.pop()
            layer_index = layer_index if len(stack) > 1 else None
            continue
        name = tokens.ConsumeIdentifierOrNumber()
        schema, path = stack[-1]
        known = schema.fields_by_name.get(name) if schema is not None else None
        inner = f"{path}.{name}" if path else name
        if schema is not None and known is None:
            found.append(_UnknownField(layer_index, inner))
        tokens.TryConsume(":")
        if tokens.TryConsume("{") or tokens.TryConsume("<"):
            if len(stack) == 1 and name == "layer":
                layer_index, layer_count, inner = layer_count, layer_count + 1, ""
            stack.append((known.message_type if known is not None else None, inner))
        else:
            _skip_value(tokens)
        if not tokens.TryConsume(","):
            tokens.TryConsume(";")
    return found


def _skip_value(tokens: text_format.Tokenizer) -> None:
    if tokens.TryConsume("["):
        depth = 1
        while depth:
            depth += {"[": 1, "]": -1}.get(tokens.token, 0)
            tokens.NextToken()
    elif tokens.token[:1] in ("'", '"'):
        tokens.ConsumeString()  # also joins adjacent string literals
    else:
        tokens.NextToken()  # a number (sign included), an identifier or an enum value


def _read_caffemodel(path: Path) -> Message:
    data = path.read_bytes()
    net = message_class("NetParameter")()
    if data.startswith(b"version https://git-lfs"):
        raise ModelFormatError(
            f"Caffe weights {path} is a Git LFS pointer ({len(data)} bytes), not the weights",
            expected="the .caffemodel itself",
            remedy="run `git lfs pull` in the repository that holds it",
        )
    try:
        net.ParseFromString(data)
    except DecodeError as exc:
        raise ModelFormatError(
            f"Caffe weights {path} is not a binary NetParameter ({len(data)} bytes; protobuf: {exc})",
            expected="a .caffemodel as Caffe writes it",
            remedy="copy the file again (it may be truncated) and check it is the caffemodel, not the prototxt",
        ) from exc
    if not len(net.layer) and not len(net.layers):
        raise ModelFormatError(
            f"Caffe weights {path} holds no layers ({len(data)} bytes)",
            expected="a .caffemodel as Caffe writes it: a binary NetParameter with one entry per layer",
            remedy="check that the file is the trained caffemodel, not an empty file, an ONNX file or a web page",
        )
    return net


def _weights_by_layer(net: Message) -> dict[str, Sequence[Message]]:
    """Blobs by layer name; V1 (``layers``) caffemodels too, as Caffe upgrades them when loading."""
    weights: dict[str, Sequence[Message]] = {v1.name: v1.blobs for v1 in net.layers}
    weights.update({layer.name: layer.blobs for layer in net.layer})
    return weights


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


# --- graph building -----------------------------------------------------------------------------
Shape = tuple[int, ...]


@dataclass
class _Tensor:
    name: str
    shape: Shape


def _unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base#2``, ``base#3``... whichever is free; it is then taken."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    taken.add(name)
    return name


@dataclass
class _Graph:
    """The ONNX graph under construction; every name it hands out is unique."""

    used: set[str]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    node_names: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        return _unique(base, self.used)

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs: object) -> None:
        unique = _unique(name, self.node_names)
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=unique, **attrs))


@dataclass
class _Layer:
    """One Caffe layer as a converter sees it: parameters, input tensors, output names, weights."""

    param: Message
    bottoms: list[_Tensor]
    tops: list[str]
    blobs: Sequence[Message]
    weights_source: str

    @property
    def name(self) -> str:
        return self.param.name

    def refuse(self, what: str, *, expected: str, remedy: str) -> ModelConversionError:
        what = f"Layer {self.name!r} ({self.param.type}): {what}"
        return ModelConversionError(what, expected=expected, remedy=remedy)

    def weights(self, *expected: tuple[str, Shape]) -> list[np.ndarray]:
        """The layer's blobs as float32 arrays of the ``expected`` (role, shape), checked like Caffe's
        CopyTrainedLayersFrom: same blob count, same shape (legacy 4-D shapes compared from the end)."""
        roles = ", ".join(f"{role} {list(shape)}" for role, shape in expected)
        if len(self.blobs) != len(expected):
            what = "has no weights" if not len(self.blobs) else f"has {len(self.blobs)} weight blobs"
            raise self.refuse(
                f"{what} in {self.weights_source}",
                expected=f"{len(expected)} blob(s): {roles}",
                remedy="use the caffemodel trained with this prototxt (weights are matched by layer name)",
            )
        return [self._blob(i, role, shape) for i, (role, shape) in enumerate(expected)]

    def _blob(self, index: int, role: str, shape: Shape) -> np.ndarray:
        blob = self.blobs[index]
        values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
        declared = _declared_shape(blob)
        if values.size != math.prod(shape) or not _same_blob_shape(declared, shape, legacy=not blob.HasField("shape")):
            raise self.refuse(
                f"blob {index} ({role}) has {values.size} values of shape {list(declared)} in {self.weights_source}",
                expected=f"shape {list(shape)} ({math.prod(shape)} values) from the prototxt and the input shape",
                remedy="check that the caffemodel belongs to this prototxt (num_output, kernel, input channels)",
            )
        return values.reshape(shape)


def _declared_shape(blob: Message) -> Shape:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def _same_blob_shape(declared: Shape, expected: Shape, *, legacy: bool) -> bool:
    """Blob::ShapeEquals: a legacy (num, channels, height, width) shape is the expected one padded
    in front with 1s (an InnerProduct weight is stored as 1 x 1 x N x K); a current shape is exact."""
    if legacy and len(expected) <= 4:
        expected = (1,) * (4 - len(expected)) + tuple(expected)
    return declared == tuple(expected)


def _axis(layer: _Layer, axis: int, rank: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: negative counts from the end."""
    if not -rank <= axis < rank:
        raise layer.refuse(
            f"{what} {axis} is out of range for an input of rank {rank}",
            expected=f"{what} in [{-rank}, {rank - 1}]",
            remedy="fix the layer parameter",
        )
    return axis % rank


# --- converters ---------------------------------------------------------------------------------
# Each takes the graph and the layer, emits nodes whose final outputs are ``layer.tops``, and returns
# the top shapes. Caffe checks are repeated where ONNX would otherwise fail later and less clearly.


def _conv_dims(layer: _Layer, repeated: str, prefix: str | None, n: int, default: int) -> list[int]:
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


def _convolution(g: _Graph, layer: _Layer) -> list[Shape]:
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
    expected = [("weights", w_shape)] + ([("bias", (num_output,))] if p.bias_term else [])
    blobs = layer.weights(*expected)
    inputs = [g.constant(f"{layer.name}/weights", blobs[0])]
    if p.bias_term:
        inputs.append(g.constant(f"{layer.name}/bias", blobs[1]))
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


def _relu(g: _Graph, layer: _Layer) -> list[Shape]:
    slope = layer.param.relu_param.negative_slope
    x = layer.bottoms[0]
    if slope:
        g.node("LeakyRelu", [x.name], layer.tops, layer.name, alpha=slope)
    else:
        g.node("Relu", [x.name], layer.tops, layer.name)
    return [x.shape]


def _unary(op: str) -> Callable[[_Graph, _Layer], list[Shape]]:
    def convert(g: _Graph, layer: _Layer) -> list[Shape]:
        g.node(op, [layer.bottoms[0].name], layer.tops, layer.name)
        return [layer.bottoms[0].shape]

    return convert


def _split(g: _Graph, layer: _Layer) -> list[Shape]:
    x = layer.bottoms[0]
    for top in layer.tops:
        g.node("Identity", [x.name], [top], layer.name)
    return [x.shape] * len(layer.tops)


def _eltwise(g: _Graph, layer: _Layer) -> list[Shape]:
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


def _scaled(g: _Graph, layer: _Layer, name: str, coeff: float, index: int) -> str:
    out = g.fresh(f"{layer.name}/coeff{index}")
    g.node("Mul", [name, g.constant(f"{layer.name}/coeff{index}_value", np.array(coeff, np.float32))], [out], out)
    return out


def _concat(g: _Graph, layer: _Layer) -> list[Shape]:
    p = layer.param.concat_param
    if p.HasField("axis") and p.HasField("concat_dim"):
        raise layer.refuse("both axis and concat_dim are set", expected="one of them", remedy="keep axis")
    first = layer.bottoms[0].shape
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    axis = _axis(layer, axis, len(first))
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


def _permute(g: _Graph, layer: _Layer) -> list[Shape]:
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


def _reshape_to(g: _Graph, layer: _Layer, x: _Tensor, shape: Shape, top: str) -> None:
    target = g.constant(f"{layer.name}/shape", np.array(shape, np.int64))
    g.node("Reshape", [x.name, target], [top], layer.name if top in layer.tops else top)


def _reshape(g: _Graph, layer: _Layer) -> list[Shape]:
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
    _reshape_to(g, layer, x, out, layer.tops[0])
    return [out]


def _flatten(g: _Graph, layer: _Layer) -> list[Shape]:
    p = layer.param.flatten_param
    x = layer.bottoms[0]
    start = _axis(layer, p.axis, len(x.shape))
    end = _axis(layer, p.end_axis, len(x.shape), "end_axis")
    out = x.shape[:start] + (math.prod(x.shape[start : end + 1]),) + x.shape[end + 1 :]
    _reshape_to(g, layer, x, out, layer.tops[0])
    return [out]


def _softmax(g: _Graph, layer: _Layer) -> list[Shape]:
    x = layer.bottoms[0]  # opset >= 13 Softmax normalises one axis, like Caffe (older opsets flatten)
    g.node("Softmax", [x.name], layer.tops, layer.name, axis=_axis(layer, layer.param.softmax_param.axis, len(x.shape)))
    return [x.shape]


def _pooling(g: _Graph, layer: _Layer) -> list[Shape]:
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
    g: _Graph, layer: _Layer, x: _Tensor, kernel: list[int], strides: list[int], pads: list[int], out: list[int]
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


def _inner_product(g: _Graph, layer: _Layer) -> list[Shape]:
    p = layer.param.inner_product_param
    x = layer.bottoms[0]
    axis = _axis(layer, p.axis, len(x.shape))
    k, n = math.prod(x.shape[axis:]), p.num_output
    if n < 1:
        raise layer.refuse("num_output is 0", expected="num_output >= 1", remedy="set inner_product_param.num_output")
    expected = [("weights", (k, n) if p.transpose else (n, k))] + ([("bias", (n,))] if p.bias_term else [])
    blobs = layer.weights(*expected)
    inputs = [x.name]
    if len(x.shape) != 2 or axis != 1:  # Gemm wants (M, K): Flatten(axis) is Caffe's lumping of axes
        inputs = [g.fresh(f"{layer.name}/flatten")]
        g.node("Flatten", [x.name], inputs, inputs[0], axis=axis)
    inputs.append(g.constant(f"{layer.name}/weights", blobs[0]))
    if p.bias_term:
        inputs.append(g.constant(f"{layer.name}/bias", blobs[1]))
    out = x.shape[:axis] + (n,)
    product = layer.tops[0] if axis == 1 else g.fresh(f"{layer.name}/gemm")
    g.node("Gemm", inputs, [product], layer.name if axis == 1 else product, transB=0 if p.transpose else 1)
    if axis != 1:
        _reshape_to(g, layer, _Tensor(product, (math.prod(x.shape[:axis]), n)), out, layer.tops[0])
    return [out]


def _batch_norm(g: _Graph, layer: _Layer) -> list[Shape]:
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


def _scale(g: _Graph, layer: _Layer) -> list[Shape]:
    p = layer.param.scale_param
    x = layer.bottoms[0]
    rank = len(x.shape)
    axis = _axis(layer, p.axis, rank)
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
        _reshape_to(g, layer, layer.bottoms[1], broadcast, factor)
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
    convert: Callable[[_Graph, _Layer], list[Shape]]
    bottoms: tuple[int, int | None]  # (min, max); None = any number
    tops: tuple[int, int | None] | None = (1, 1)  # None: as many tops as bottoms


_CONVERTERS: dict[str, _Spec] = {
    "BatchNorm": _Spec(_batch_norm, (1, 1)),
    "Concat": _Spec(_concat, (1, None)),
    "Convolution": _Spec(_convolution, (1, None), None),
    "Deconvolution": _Spec(_convolution, (1, None), None),
    "Dropout": _Spec(_unary("Identity"), (1, 1)),
    "Eltwise": _Spec(_eltwise, (2, None)),
    "Flatten": _Spec(_flatten, (1, 1)),
    "InnerProduct": _Spec(_inner_product, (1, 1)),
    "Permute": _Spec(_permute, (1, 1)),
    "Pooling": _Spec(_pooling, (1, 1)),
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


# --- the conversion -----------------------------------------------------------------------------
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
    proto_path = _existing_file(Path(prototxt), "prototxt", "check the path of the .prototxt")
    beside = caffemodel_beside(proto_path)
    weights_path = Path(caffemodel) if caffemodel is not None else beside
    _existing_file(weights_path, "caffemodel", f"put the weights beside the prototxt as {beside.name} or pass caffemodel=")
    net, unknown = _read_prototxt(proto_path)
    weights = _weights_by_layer(_read_caffemodel(weights_path))
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


def _refuse_unknown_fields(unknown: list[_UnknownField], layers: list[tuple[int, Message]], path: Path) -> None:
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


def _convert(
    net: Message,
    layers: list[tuple[int, Message]],
    weights: dict[str, Sequence[Message]],
    proto_path: Path,
    weights_path: Path,
) -> tuple[_Graph, list[onnx.ValueInfoProto], list[onnx.ValueInfoProto], dict[str, Shape]]:
    """Walk the layers in order, keeping the current ONNX tensor of every Caffe blob.

    Returns the graph, its inputs and outputs, and Caffe's shape of every top (for ``_check_shapes``).
    """
    ordered = [layer for _, layer in layers]
    net_inputs = _net_level_inputs(net, proto_path)
    names = _output_names(ordered, set(net_inputs))
    blobs = {name for layer in ordered for name in (*layer.top, *layer.bottom)} | set(net_inputs)
    graph = _Graph(used=set(blobs) | {n for layer_names in names for n in layer_names})
    current: dict[str, _Tensor] = {name: _Tensor(name, shape) for name, shape in net_inputs.items()}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in net_inputs.items()]
    consumed: set[str] = set()
    produced: list[_Tensor] = []
    for layer, tops in zip(ordered, names):
        bottoms = [_bottom(current, layer, i, b, proto_path) for i, b in enumerate(layer.bottom)]
        consumed.update(b.name for b in bottoms)
        if layer.type == "Input":
            shapes = _input_shapes(layer, proto_path)
            inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(tops, shapes)]
        else:
            source = str(weights_path) if layer.name in weights else f"{weights_path}, which has no layer of that name"
            view = _Layer(layer, bottoms, tops, weights.get(layer.name, layer.blobs), source)
            _check_arity(view)
            shapes = _CONVERTERS[layer.type].convert(graph, view)
        for blob, onnx_name, shape in zip(layer.top, tops, shapes):
            current[blob] = _Tensor(onnx_name, tuple(int(d) for d in shape))
            if layer.type != "Input":
                produced.append(current[blob])
    unread = [t for t in produced if t.name not in consumed]
    outputs = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, t.shape) for t in unread]
    return graph, inputs, outputs, {t.name: t.shape for t in produced}


def _bottom(current: dict[str, _Tensor], layer: Message, index: int, blob: str, path: Path) -> _Tensor:
    if blob not in current:
        raise ModelConversionError(
            f"Layer {layer.name!r} ({layer.type}) reads bottom {index} {blob!r}, which no earlier layer of {path} makes",
            expected="every bottom to be an input or the top of an earlier layer (Caffe: 'Unknown bottom blob')",
            remedy="check the spelling of the bottom and the order of the layers",
        )
    return current[blob]


def _check_arity(layer: _Layer) -> None:
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
            names[li][ti] = blob if (li, ti) == keeper else _unique(f"{blob}/{layers[li].name}", used)
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
    graph: _Graph,
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
