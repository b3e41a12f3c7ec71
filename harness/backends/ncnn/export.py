"""ONNX -> ncnn with pnnx, and int8 scales written into an ncnn model the way ncnn2int8 writes them.

Why not ncnn's C++ tools: only the ``ncnn`` and ``pnnx`` wheels are on PyPI. pnnx writes the fp32
``.ncnn.param/.bin``; quantising is then a small edit that this module makes itself, from a scale
table keyed by ncnn layer name (the harness's plan through ``plan_to_ncnn_table``, or a user's
``.table``).

Facts (read in ncnn's ``src/layer/convolution.cpp``, ``convolutiondepthwise.cpp``,
``innerproduct.cpp`` ``load_param``/``load_model``, ``src/modelbin.cpp`` and
``tools/quantize/ncnn2int8.cpp``):

* param key ``8=`` is ``int8_scale_term``: ncnn2int8 sets 2 on Convolution and InnerProduct and 1
  on ConvolutionDepthWise, then adds 100 where it fuses the requantisation (below).
* ``.bin`` per layer: the weight blob as a 4-byte flag (0 = raw fp32; 0x000D4B38 int8,
  0x01306B47 fp16) plus data, the bias as raw fp32 (no flag), then, with the term set, raw fp32
  ``weight_data_int8_scales`` (``num_output`` floats; ``group`` floats for ConvolutionDepthWise
  with term 1/101, one float with 2/102), ``bottom_blob_int8_scales`` (1 float) and, with a term
  above 100, ``top_blob_int8_scales`` (1 float). So the scales go at the end of the layer's data.
* With the term set and fp32 weights, ncnn quantises the weights at load time with the same
  ``quantize_to_int8`` (round half away from zero, clamp to [-127, 127]) that ncnn2int8 applies
  offline, so keeping fp32 weights gives the same int8 model.
* Requantisation fusion (ncnn2int8 ``fuse_requantize``): a Convolution/ConvolutionDepthWise whose
  output blob is read by a single-input Convolution/ConvolutionDepthWise gets +100 and that
  consumer's bottom scale as its top scale, and then writes int8 codes. Through a Split, the same
  happens when every Split output is read by such a layer; the top scale is the *first* Split
  consumer's bottom scale (the others read codes made with it).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from harness.backends.base import BackendError
from harness.backends.ncnn.param import INT8_LAYER_TYPES, NcnnGraph, NcnnLayer, layer_spans
from harness.errors import ConfigError

log = logging.getLogger(__name__)
_CONVS = frozenset({"Convolution", "ConvolutionDepthWise"})
_PNNX_TIMEOUT_S = 600


# --- pnnx -----------------------------------------------------------------------------------------
def pnnx_executable() -> Path | None:
    """The pnnx binary shipped in the ``pnnx`` wheel, found without importing the package (its
    ``__init__`` imports torch, seconds of start-up that the ONNX path never needs)."""
    spec = find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for name in ("pnnx", "pnnx.exe"):
            path = Path(folder) / name
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def run_pnnx(onnx_path: Path, work_dir: Path, input_shapes: Sequence[Sequence[int]]) -> tuple[Path, Path]:
    """pnnx on ``onnx_path`` in ``work_dir``: fp32 ``model.ncnn.param``/``.bin`` (``fp16=0``).

    pnnx writes several side files next to its input, so it runs on a copy inside ``work_dir``.
    It reads only local files; its output is checked, not trusted.
    """
    exe = pnnx_executable()
    if exe is None:
        raise BackendError("Got no pnnx executable", expected="the pnnx wheel installed",
                           remedy="pip install pnnx (or pip install -e '.[test]')")
    work_dir.mkdir(parents=True, exist_ok=True)
    model = work_dir / "model.onnx"
    if onnx_path.resolve() != model.resolve():
        shutil.copyfile(onnx_path, model)
    shapes = ",".join("[" + ",".join(str(int(d)) for d in shape) + "]" for shape in input_shapes)
    param, binary = work_dir / "model.ncnn.param", work_dir / "model.ncnn.bin"
    args = [str(exe), model.name, f"inputshape={shapes}", "fp16=0", f"ncnnparam={param.name}",
            f"ncnnbin={binary.name}"]
    proc = subprocess.run(args, cwd=work_dir, capture_output=True, text=True, timeout=_PNNX_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0 or not param.is_file() or not binary.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BackendError(f"pnnx failed on {onnx_path} (exit {proc.returncode}): {' | '.join(tail)}",
                           expected="an ONNX model pnnx can convert", remedy="check the model with onnx.checker; "
                           "ops pnnx does not know stay unconverted and must be replaced in the model")
    return param, binary


# --- int8 -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerScales:
    """ncnn's multiplicative scales of one layer (``q = round(x * s)``)."""

    weight: np.ndarray
    bottom: float


@dataclass
class Int8Model:
    """An int8 ncnn model in memory, and what the runtime needs to read it back in real units."""

    graph: NcnnGraph
    data: bytes
    #: ncnn layer name -> the scales written into it (bottom scale, top scale when fused).
    bottom_scales: dict[str, float] = field(default_factory=dict)
    top_scales: dict[str, float] = field(default_factory=dict)
    #: blob -> scale of the int8 codes ncnn keeps in it (between fused layers), for dequantising, and
    #: blob -> the layer whose bottom scale made those codes.
    code_blobs: dict[str, float] = field(default_factory=dict)
    code_readers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def write(self, param: Path, binary: Path) -> tuple[Path, Path]:
        param.write_text(self.graph.text(), encoding="utf-8")
        binary.write_bytes(self.data)
        return param, binary


def quantize_graph(graph: NcnnGraph, data: bytes, scales: Mapping[str, LayerScales], *,
                   fuse_requantize: bool = True) -> Int8Model:
    """A copy of the fp32 model (``graph``/``data``) with ``scales`` written as ncnn2int8 would."""
    if graph.is_int8:
        raise ConfigError("Got an ncnn model that is already int8 (int8_scale_term set) and scales to apply",
                          expected="an fp32 ncnn model to quantise", remedy="pass the fp32 .param/.bin, or run "
                          "the int8 model without a table")
    types = {layer.name: layer.type for layer in graph.layers}
    unknown = sorted(set(scales) - set(types))
    if unknown:
        raise ConfigError(f"Got scales for {len(unknown)} layer(s) the ncnn model does not have, e.g. {unknown[:3]}",
                          expected="layer names of the .param (ncnn2table keys its lines by them)",
                          remedy="check that the table was made for this .param")
    spans = layer_spans(graph, data)
    layers = [NcnnLayer(l.type, l.name, list(l.bottoms), list(l.tops), dict(l.params)) for l in graph.layers]
    out = Int8Model(NcnnGraph(layers), b"")
    other = sorted(name for name in scales if types[name] not in INT8_LAYER_TYPES)
    if other:  # newer ncnn2table versions also write e.g. Gemm or MultiHeadAttention scales
        out.notes.append(f"scales for {len(other)} layer(s) of types this writer does not quantise stay unused: "
                         f"{other[:3]}")
        scales = {name: s for name, s in scales.items() if name not in other}
    weight_scales: dict[str, np.ndarray] = {}
    for layer in layers:
        if layer.name not in scales:
            continue
        s = scales[layer.name]
        weight_scales[layer.name] = _weight_scales_for(layer, np.asarray(s.weight, np.float32).reshape(-1), out.notes)
        out.bottom_scales[layer.name] = float(np.float32(s.bottom))
        # ConvolutionDepthWise: term 1 reads one weight scale per group, term 2 one for all groups.
        per_group = layer.type == "ConvolutionDepthWise" and (weight_scales[layer.name].size > 1
                                                              or layer.get_int(7, 1) == 1)
        layer.params["8"] = "1" if per_group else "2"
    if fuse_requantize:
        _fuse_requantize(out)
    chunks = []
    for layer, (start, end) in zip(layers, spans):
        chunks.append(data[start:end])
        if layer.name in weight_scales:
            extra = [weight_scales[layer.name], [out.bottom_scales[layer.name]]]
            if layer.name in out.top_scales:
                extra.append([out.top_scales[layer.name]])
            chunks.append(np.concatenate([np.asarray(e, "<f4").reshape(-1) for e in extra]).tobytes())
    chunks.append(data[spans[-1][1]:] if spans else data)
    out.data = b"".join(chunks)
    return out


def six_bit_layers(graph: NcnnGraph) -> list[str]:
    """Layers ncnn2table gives 31/absmax (6-bit) weight scales: Convolution (not ConvolutionDepthWise) with a
    3x3 kernel, stride 1 and dilation 1 ("int8 winograd F43 needs weight data to use 6bit quantization")."""
    out = []
    for layer in graph.layers:
        kw, dw, sw = layer.get_int(1), layer.get_int(2, 1), layer.get_int(3, 1)
        kh, dh, sh = layer.get_int(11, kw), layer.get_int(12, dw), layer.get_int(13, sw)
        if layer.type == "Convolution" and (kw, kh, dw, dh, sw, sh) == (3, 3, 1, 1, 1, 1):
            out.append(layer.name)
    return out


def six_bit_scales(weights: np.ndarray, num_output: int) -> np.ndarray:
    """ncnn2table's ``31 / absmax`` per output channel, in float32 (0 for a dead channel, as 8-bit tables)."""
    absmax = np.abs(np.asarray(weights, np.float32).reshape(num_output, -1)).max(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(absmax > 0, np.float32(31) / absmax, 0).astype(np.float32)


def _weight_scales_for(layer: NcnnLayer, scales: np.ndarray, notes: list[str]) -> np.ndarray:
    """The weight scales ncnn reads for ``layer``: one per output (Convolution, InnerProduct), one per group
    (ConvolutionDepthWise, term 1) or one for all (term 2)."""
    num_output = layer.get_int(0)
    if layer.type != "ConvolutionDepthWise":
        if scales.size == 1:
            return np.full(num_output, scales[0], np.float32)
        if scales.size != num_output:
            raise ConfigError(f"Got {scales.size} weight scales for {layer.type} {layer.name!r} with {num_output} "
                              "outputs", expected="one scale per output channel", remedy="regenerate the table")
        return scales
    group = layer.get_int(7, 1)
    if scales.size in (1, group):
        return scales
    if scales.size == num_output and num_output % group == 0:
        # ncnn keeps one scale per group; the smallest scale of a group's channels clips none of them.
        per_group = scales.reshape(group, -1)
        nonzero = np.where(per_group > 0, per_group, np.inf).min(axis=1)
        notes.append(f"{layer.name}: {num_output // group} output channels per group share the smallest of "
                     "their weight scales (ncnn keeps one scale per group)")
        return np.where(np.isfinite(nonzero), nonzero, 0).astype(np.float32)
    raise ConfigError(f"Got {scales.size} weight scales for ConvolutionDepthWise {layer.name!r} with {group} groups",
                      expected=f"{group} scales (one per group) or 1", remedy="regenerate the table")


def _fuse_requantize(model: Int8Model) -> None:
    """ncnn2int8's fusion: int8 codes flow from a conv to the convs that read its output directly or
    through one Split whose outputs all feed int8 convs (see the module docstring)."""
    graph, int8 = model.graph, model.bottom_scales
    consumers = graph.consumers()

    def int8_conv_reader(blob: str) -> NcnnLayer | None:
        users = consumers.get(blob, [])
        if len(users) == 1 and users[0].type in _CONVS and len(users[0].bottoms) == 1 and users[0].name in int8:
            return users[0]
        return None

    for layer in graph.layers:
        if layer.type not in _CONVS or layer.name not in int8:
            continue
        top = layer.tops[0]
        reader = int8_conv_reader(top)
        code_blobs = [top]
        users = consumers.get(top, [])
        if reader is None and len(users) == 1 and users[0].type == "Split" and len(users[0].bottoms) == 1:
            readers = [int8_conv_reader(t) for t in users[0].tops]
            if all(r is not None for r in readers):
                reader = readers[0]
                code_blobs += list(users[0].tops)
                others = {r.name: int8[r.name] for r in readers[1:] if int8[r.name] != int8[reader.name]}
                if others:
                    model.notes.append(f"{layer.name}: Split readers {sorted(others)} get codes made with "
                                       f"{reader.name}'s bottom scale, not their own (ncnn2int8 behaviour)")
        if reader is None:
            continue
        layer.params["8"] = str(int(layer.params["8"]) + 100)
        model.top_scales[layer.name] = int8[reader.name]
        for blob in code_blobs:
            model.code_blobs[blob] = int8[reader.name]
            model.code_readers[blob] = reader.name
