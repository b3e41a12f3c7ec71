"""The caffe.proto subset this importer reads, and reading Caffe's two files with it.

Design (why a hand-declared subset, why unknown fields are tolerated while parsing): see
``harness.model.caffe``. This module turns the schema text into message classes in a private
descriptor pool, parses a deploy ``.prototxt`` (text) and a ``.caffemodel`` (binary) with them, and
refuses files that are not what they claim to be (binary prototxt, V1 prototxt, LFS pointer,
truncated or empty caffemodel). It also reports which prototxt fields the subset does not declare,
so that the driver can refuse them where they matter.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from harness.errors import ModelConversionError, ModelFormatError, ModelNotFoundError

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
class UnknownField:
    """A prototxt field the subset does not declare (text_format skipped it while parsing)."""

    layer_index: int | None  # position among the prototxt's ``layer`` blocks; None outside them
    path: str  # dotted path inside the layer (or the net), e.g. "pooling_param.ceil_mode"


def caffemodel_beside(prototxt: str | os.PathLike[str]) -> Path:
    """The weights file Caffe users keep next to a prototxt: same stem, suffix ``.caffemodel``."""
    return Path(prototxt).with_suffix(".caffemodel")


def existing_file(path: Path, what: str, remedy: str) -> Path:
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise ModelNotFoundError(f"Caffe {what} {path} {state}", expected=f"a Caffe {what} file", remedy=remedy)
    return path


def read_prototxt(path: Path) -> tuple[Message, list[UnknownField]]:
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


def _unknown_fields(text: str, root: Descriptor) -> list[UnknownField]:
    """Every field of ``text`` that ``root``'s schema does not declare (not below unknown ones).

    The text already parsed, so this walk only tracks nesting; it exists because text_format
    skips unknown fields without saying which.
    """
    tokens = text_format.Tokenizer(text.splitlines())
    stack: list[tuple[Descriptor | None, str]] = [(root, "")]
    layer_index: int | None = None
    layer_count = 0
    found: list[UnknownField] = []
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
            found.append(UnknownField(layer_index, inner))
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


def read_caffemodel(path: Path) -> Message:
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


def weights_by_layer(net: Message) -> dict[str, Sequence[Message]]:
    """Blobs by layer name; V1 (``layers``) caffemodels too, as Caffe upgrades them when loading."""
    weights: dict[str, Sequence[Message]] = {v1.name: v1.blobs for v1 in net.layers}
    weights.update({layer.name: layer.blobs for layer in net.layer})
    return weights
