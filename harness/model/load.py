"""Load an ONNX file, refuse what is not a usable model, and normalise what is.

Models reach users through Git LFS, web downloads and half-finished copies, so the first job is
to say precisely *why* a file is not a model (an LFS pointer, an HTML page, a truncation) instead
of surfacing a protobuf DecodeError. The second job is normalisation, because the quantisation
core needs a graph it can rewrite:

* initializers also listed as graph inputs are dropped from the inputs. Exporters for IR < 4 did
  this; onnxruntime then treats every weight as overridable, warns, and cannot fold BatchNorm or
  fuse Conv+ReLU (UltraFace: 4.7 ms instead of about 2 ms per image). Initializers no node reads
  (PyTorch's ``num_batches_tracked``) are dropped too: onnxruntime warns about each one;
* the opset is raised to at least 13, where QuantizeLinear/DequantizeLinear take an ``axis``
  (a QDQ model written at opset 9 is invalid);
* shapes are inferred, so every tensor has a dtype and, where knowable, a shape.

Every tensor name of the original graph is kept: golden dumps and calibration tables are keyed
by those names, and the version converter is checked not to have renamed any.

A Caffe model is loaded from its ``.prototxt`` (weights: the ``.caffemodel`` of the same stem beside
it); it is converted by ``harness.model.caffe`` and then normalised like any ONNX file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import version_converter

from harness.errors import (
    ModelExternalDataError,
    ModelFormatError,
    ModelNotFoundError,
)
from harness.model.caffe import caffe_to_onnx, caffemodel_beside

MIN_OPSET = 13
_LFS_MAGIC = b"version https://git-lfs"
_SNIFF_BYTES = 1024


@dataclass(frozen=True)
class Model:
    """A loaded, normalised model and where it came from.

    ``sha256`` is of the file as read (before normalisation): it is what golden manifests record,
    so a re-export of the same weights with another exporter shows up as a changed model. For a
    Caffe model it is the sha256 of the prototxt's bytes followed by the caffemodel's bytes (both
    files define the model), and ``original_opset``/``original_ir_version`` are the converter's.
    """

    path: Path
    proto: onnx.ModelProto = field(repr=False)
    sha256: str
    original_opset: int
    original_ir_version: int
    dropped_initializer_inputs: tuple[str, ...] = ()

    @property
    def opset(self) -> int:
        return default_opset(self.proto)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.proto.graph.input]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]

    def serialized(self) -> bytes:
        """The normalised model as bytes, ready for ``onnxruntime.InferenceSession``."""
        return self.proto.SerializeToString()


def load_model(path: str | os.PathLike[str], *, normalise: bool = True) -> Model:
    """Read ``path``, reject it with a precise error if it is not an ONNX model, and normalise it.

    A ``.prototxt`` path is a Caffe model: it is converted (the ``.caffemodel`` beside it holds the
    weights), then normalised as usual.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".caffemodel":
        prototxt = path.with_suffix(".prototxt")
        raise ModelFormatError(
            f"Model path {path} is Caffe weights; the network is defined by its prototxt",
            expected="the .prototxt (give the .prototxt; the .caffemodel beside it is found by name)",
            remedy=f"load {prototxt}" + ("" if prototxt.is_file() else " (it is not there yet: put the deploy prototxt beside the weights)"),
        )
    if suffix == ".prototxt":
        return _load_caffe(path, normalise=normalise)
    data = _read_bytes(path)
    _refuse_obvious_non_models(path, data)
    proto = _parse(path, data)
    _load_external_data(path, proto)
    original_opset = default_opset(proto)
    original_ir = proto.ir_version
    dropped: tuple[str, ...] = ()
    if normalise:
        proto, dropped = normalise_model(proto, source=path)
    return Model(
        path=path,
        proto=proto,
        sha256=hashlib.sha256(data).hexdigest(),
        original_opset=original_opset,
        original_ir_version=original_ir,
        dropped_initializer_inputs=dropped,
    )


def _load_caffe(path: Path, *, normalise: bool) -> Model:
    proto = caffe_to_onnx(path)
    digest = hashlib.sha256(path.read_bytes())
    digest.update(caffemodel_beside(path).read_bytes())
    original_opset, original_ir = default_opset(proto), proto.ir_version
    if normalise:
        proto, _ = normalise_model(proto, source=path)
    return Model(
        path=path,
        proto=proto,
        sha256=digest.hexdigest(),
        original_opset=original_opset,
        original_ir_version=original_ir,
    )


def default_opset(proto: onnx.ModelProto) -> int:
    """The version of the default ("" / ai.onnx) domain; 0 when the model imports none."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def normalise_model(proto: onnx.ModelProto, *, source: Path | str = "<model>") -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """Drop initializer inputs, upgrade to opset >= 13, infer shapes. Returns a new proto."""
    proto_copy = onnx.ModelProto()
    proto_copy.CopyFrom(proto)
    dropped = _drop_initializer_inputs(proto_copy)
    _drop_unused_initializers(proto_copy)
    names_before = _tensor_names(proto_copy)
    if default_opset(proto_copy) < MIN_OPSET:
        proto_copy = _upgrade_opset(proto_copy, source)
    missing = names_before - _tensor_names(proto_copy)
    if missing:  # the converter must only add tensors, never rename the user's
        raise ModelFormatError(
            f"Upgrading {source} to opset {MIN_OPSET} renamed tensors: {sorted(missing)[:5]}",
            expected="the onnx version converter to keep tensor names",
            remedy=f"re-export the model at opset >= {MIN_OPSET}",
        )
    try:
        proto_copy = onnx.shape_inference.infer_shapes(proto_copy, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types here
        raise ModelFormatError(
            f"Shape inference failed on {source}: {exc}",
            expected="a model that onnx.shape_inference can process",
            remedy="check the model with onnx.checker.check_model and re-export it",
        ) from exc
    return proto_copy, dropped


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ModelNotFoundError(
            f"Model file {path} does not exist",
            expected="a path to an .onnx file",
            remedy="check the path (relative paths in a suite file are relative to that file)",
        )
    if path.is_dir():
        raise ModelNotFoundError(
            f"Model path {path} is a directory",
            expected="a path to an .onnx file, not the folder that holds it",
            remedy=f"name the file inside it, e.g. {path / 'model.onnx'}",
        )
    data = path.read_bytes()
    if not data:
        raise ModelFormatError(
            f"Model file {path} is empty (0 bytes)",
            expected="an ONNX protobuf",
            remedy="copy or export the model again; an interrupted download leaves an empty file",
        )
    return data


def _refuse_obvious_non_models(path: Path, data: bytes) -> None:
    head = data[:_SNIFF_BYTES]
    if head.startswith(_LFS_MAGIC):
        raise ModelFormatError(
            f"Model file {path} is a Git LFS pointer ({len(data)} bytes), not the model",
            expected="the ONNX file itself",
            remedy="run `git lfs pull` (or `git lfs fetch && git lfs checkout`) in the repository that holds it",
        )
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in stripped[:256]:
        raise ModelFormatError(
            f"Model file {path} is an HTML/XML page ({len(data)} bytes), not an ONNX model",
            expected="an ONNX protobuf",
            remedy="the download saved a web page (a login or 'file too large' page): download the raw file",
        )


def _parse(path: Path, data: bytes) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    # ModelProto always begins with field 1 (ir_version, varint): tag byte 0x08. A file that starts
    # like a model but does not parse was almost certainly cut short.
    looks_like_onnx = data[:1] == b"\x08"
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        if looks_like_onnx:
            raise ModelFormatError(
                f"Model file {path} is truncated or corrupt ({len(data)} bytes; protobuf: {exc})",
                expected="a complete ONNX file",
                remedy="copy or export it again and compare its size or checksum with the source",
            ) from exc
        raise ModelFormatError(
            f"Model file {path} is not an ONNX protobuf ({len(data)} bytes, starts with {data[:8]!r})",
            expected="an ONNX model (.onnx)",
            remedy="export the model to ONNX (e.g. torch.onnx.export); TFLite files need converting first, "
            "Caffe models load from their .prototxt",
        ) from exc
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelFormatError(
            f"Model file {path} parsed as protobuf but has no ONNX graph (ir_version={proto.ir_version})",
            expected="an ONNX model (.onnx)",
            remedy="check that this is the ONNX export and not another protobuf (e.g. a .caffemodel or .pb)",
        )
    if not proto.opset_import or not proto.graph.node:
        raise ModelFormatError(
            f"Model file {path} has no {'opset_import' if not proto.opset_import else 'nodes'}: it is truncated",
            expected="a complete ONNX file",
            remedy="copy or export it again and compare its size or checksum with the source",
        )
    return proto


def _load_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """Check and load tensors stored in external files, naming any file that is missing or short."""
    base = path.parent
    needed: dict[Path, int] = {}
    for tensor in onnx.external_data_helper._get_all_tensors(proto):  # noqa: SLF001 - public twin is a generator of initializers only
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = base / info.get("location", "")
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if not location.is_file():
            raise ModelExternalDataError(
                f"Model {path} keeps tensor {tensor.name!r} in external file {location}, which is missing",
                expected="the external-data file next to the model",
                remedy="copy the .onnx file together with its data file(s) into the same folder",
            )
        needed[location] = max(needed.get(location, 0), end)
    for location, end in needed.items():
        if location.stat().st_size < end:
            raise ModelExternalDataError(
                f"External data file {location} has {location.stat().st_size} bytes; model {path} needs {end}",
                expected="the complete external-data file",
                remedy="copy the data file again; it is truncated",
            )
    if needed:
        onnx.external_data_helper.load_external_data_for_model(proto, str(base))


def _drop_initializer_inputs(proto: onnx.ModelProto) -> tuple[str, ...]:
    init_names = {t.name for t in proto.graph.initializer}
    kept = [i for i in proto.graph.input if i.name not in init_names]
    dropped = tuple(i.name for i in proto.graph.input if i.name in init_names)
    if dropped:
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    return dropped


def _drop_unused_initializers(proto: onnx.ModelProto) -> None:
    graph = proto.graph
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(_all_node_inputs(node))
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _all_node_inputs(node: onnx.NodeProto) -> set[str]:
    names = set(node.input)
    for attr in node.attribute:
        for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
            for sub_node in sub.node:
                names.update(_all_node_inputs(sub_node))
    return names


def _upgrade_opset(proto: onnx.ModelProto, source: Path | str) -> onnx.ModelProto:
    try:
        upgraded = version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors and others
        raise ModelFormatError(
            f"Could not upgrade {source} from opset {default_opset(proto)} to {MIN_OPSET}: {exc}",
            expected=f"a model the onnx version converter can raise to opset {MIN_OPSET}",
            remedy=f"re-export the model at opset >= {MIN_OPSET}",
        ) from exc
    min_ir = onnx.helper.find_min_ir_version_for(list(upgraded.opset_import))
    if upgraded.ir_version < min_ir:  # opset 13 needs IR >= 7; onnxruntime rejects the mismatch
        upgraded.ir_version = min_ir
    return upgraded


def _tensor_names(proto: onnx.ModelProto) -> set[str]:
    graph = proto.graph
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(n for n in node.output if n)
    return names
