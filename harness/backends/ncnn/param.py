"""ncnn's model files as data: the ``.param`` text and where each layer's data sits in the ``.bin``.

Why: the int8 export edits a pnnx-written fp32 model (one param key per quantised layer, a few
floats appended to its weights), and a user's own ncnn model is read the same way to apply a
``.table``. Both need the layer list and the byte span of every layer's data.

Format facts (ncnn ``src/paramdict.cpp``, ``src/net.cpp``): the text starts with the magic
``7767517``, then ``<layer count> <blob count>``, then one line per layer:
``<type> <name> <bottom count> <top count> <bottoms...> <tops...> <key>=<value>...``. A value is
an int, a float (it holds ``.`` or ``e``) or, for a key ``k <= -23300``, an array
``n,v1,...,vn`` for the parameter ``-k - 23300``. The ``.bin`` holds the layers' data in layer
order with no index, so a span is found by letting ncnn itself load each layer alone from a
reader that counts the bytes (:func:`layer_spans`): no per-layer-type size formula to keep up.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ModelFormatError

MAGIC = "7767517"
#: Layer types that run int8 in ncnn when ``8=`` (int8_scale_term) is set.
INT8_LAYER_TYPES = frozenset({"Convolution", "ConvolutionDepthWise", "InnerProduct"})


@dataclass
class NcnnLayer:
    """One ``.param`` line. ``params`` keeps the file's keys and value text in order (round trip)."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str] = field(default_factory=dict)

    def get_int(self, key: int, default: int = 0) -> int:
        value = self.params.get(str(key))
        return default if value is None else int(float(value))

    @property
    def int8_scale_term(self) -> int:
        return self.get_int(8)

    def line(self) -> str:
        head = [self.type, self.name, str(len(self.bottoms)), str(len(self.tops)), *self.bottoms, *self.tops]
        return " ".join(head + [f"{k}={v}" for k, v in self.params.items()])


@dataclass
class NcnnGraph:
    layers: list[NcnnLayer]

    @property
    def blob_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for layer in self.layers:
            for name in (*layer.bottoms, *layer.tops):
                seen.setdefault(name)
        return list(seen)

    @property
    def input_blobs(self) -> list[str]:
        return [top for layer in self.layers if layer.type == "Input" for top in layer.tops]

    @property
    def is_int8(self) -> bool:
        return any(layer.int8_scale_term for layer in self.layers if layer.type in INT8_LAYER_TYPES)

    def producer(self) -> dict[str, NcnnLayer]:
        return {top: layer for layer in self.layers for top in layer.tops}

    def consumers(self) -> dict[str, list[NcnnLayer]]:
        out: dict[str, list[NcnnLayer]] = {}
        for layer in self.layers:
            for bottom in layer.bottoms:
                out.setdefault(bottom, []).append(layer)
        return out

    def text(self) -> str:
        lines = [MAGIC, f"{len(self.layers)} {len(self.blob_names)}", *(layer.line() for layer in self.layers)]
        return "\n".join(lines) + "\n"


def parse_param(text: str, *, source: str = "<param>") -> NcnnGraph:
    """The layers of an ncnn ``.param`` text (refuses the binary ``.param.bin`` and other files)."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if not rows or rows[0] != [MAGIC]:
        raise ModelFormatError(f"{source} does not start with ncnn's magic number {MAGIC}",
                               expected="an ncnn text .param file (pnnx, onnx2ncnn or caffe2ncnn output)",
                               remedy="pass the .param text file, not the .bin or a .param.bin")
    try:
        layer_count = int(rows[1][0])
    except (IndexError, ValueError):
        raise ModelFormatError(f"{source} line 2 is not '<layer count> <blob count>'",
                               expected="two integers", remedy="regenerate the .param file") from None
    layers = [_parse_layer(row, source=source, lineno=i + 3) for i, row in enumerate(rows[2:])]
    if len(layers) != layer_count:
        raise ModelFormatError(f"{source} declares {layer_count} layers and holds {len(layers)}",
                               expected="a complete .param file", remedy="regenerate the .param file")
    return NcnnGraph(layers)


def _parse_layer(row: list[str], *, source: str, lineno: int) -> NcnnLayer:
    try:
        n_bottom, n_top = int(row[2]), int(row[3])
        blobs = row[4: 4 + n_bottom + n_top]
        if len(blobs) != n_bottom + n_top:
            raise ValueError
        params = dict(item.split("=", 1) for item in row[4 + n_bottom + n_top:])
    except (IndexError, ValueError):
        raise ModelFormatError(f"{source} line {lineno} is not an ncnn layer line: {' '.join(row)[:120]!r}",
                               expected="<type> <name> <bottoms> <tops> <blob names> <key>=<value>...",
                               remedy="regenerate the .param file") from None
    return NcnnLayer(row[0], row[1], blobs[:n_bottom], blobs[n_bottom:], params)


def read_param(path: str | Path) -> NcnnGraph:
    path = Path(path)
    return parse_param(path.read_text(encoding="utf-8", errors="replace"), source=str(path))


# --- .bin spans -----------------------------------------------------------------------------------
def layer_spans(graph: NcnnGraph, data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` byte offsets of each layer's data in ``data`` (the ``.bin``), in layer order.

    Each layer is loaded alone by ncnn from a counting reader that starts where the previous one
    ended; layers without data read nothing. A file too short for its layers is refused.
    """
    import ncnn

    spans = []
    offset = 0
    for layer in graph.layers:
        reader = _counting_reader(data, offset)
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = 1
        if net.load_param_mem(_single_layer_param(layer)) != 0:
            raise ModelFormatError(f"ncnn cannot read layer {layer.name!r} ({layer.type})",
                                   expected="layer types and parameters of this ncnn version",
                                   remedy="update the ncnn wheel, or regenerate the model with the matching pnnx")
        net.load_model(reader)
        if reader.short:
            raise ModelFormatError(f"The .bin ends inside the data of layer {layer.name!r} ({layer.type})",
                                   expected=f"at least {reader.pos + reader.short} bytes", remedy="pass the .bin "
                                   "that was written with this .param")
        spans.append((offset, reader.pos))
        offset = reader.pos
        net.clear()
    return spans


def _single_layer_param(layer: NcnnLayer) -> str:
    inputs = [NcnnLayer("Input", f"in_{i}", [], [b]) for i, b in enumerate(dict.fromkeys(layer.bottoms))]
    return NcnnGraph(inputs + [layer]).text()


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _counting_reader(data: bytes, offset: int):
    """An ``ncnn.DataReader`` serving ``data`` from ``offset`` and counting what was read (the binding
    lets Python override ``read``; ncnn hands it a capsule holding the destination pointer)."""
    import ncnn

    class Reader(ncnn.DataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.pos = offset
            self.short = 0

        def scan(self, fmt: str, p: object) -> int:
            return 0

        def read(self, buf: object, size: int) -> int:
            chunk = data[self.pos: self.pos + size]
            ctypes.memmove(_capsule_pointer(buf, None), chunk, len(chunk))
            self.short += size - len(chunk)
            self.pos += len(chunk)
            return len(chunk)

    return Reader()

