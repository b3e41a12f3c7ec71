"""The ncnn backend: the harness's plan exported as a real ncnn int8 model and run by ncnn itself.

``prepare``: pnnx turns the BN-folded ONNX model into an fp32 ncnn model; one fp32 forward pass on
a fixed random input maps its blobs to ONNX tensors (:mod:`.mapping`); the plan's scales
(``plan_to_ncnn_table``: ncnn's own 127/threshold and 127/absmax numbers) are written into the
layers pnnx made from the plan's Conv/Gemm nodes (:mod:`.export`). ``run`` feeds ONNX inputs and
returns every mapped tensor, dequantised, in its ONNX shape.

:func:`load_ncnn_model` does the same for a user's own ``.param``/``.bin`` (optionally with an ncnn
``.table`` to apply, or already int8 from ncnn2int8), so the file that ships is the one verified.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx

from harness.backends import register_backend
from harness.backends.base import Backend, BackendError, TensorMap, require_prepared
from harness.backends.ncnn.export import (
    Int8Model, LayerScales, pnnx_executable, quantize_graph, run_pnnx, six_bit_layers, six_bit_scales,
)
from harness.backends.ncnn.mapping import match_blobs, match_layers, match_names, ncnn_weights
from harness.backends.ncnn.param import NcnnGraph, layer_spans, read_param
from harness.backends.ncnn.run import NcnnOptions, NcnnRunner, ncnn_available
from harness.errors import ConfigError
from harness.model.graph import tensor_list
from harness.model.runner import TapRunner
from harness.quant.calibration import as_model
from harness.quant.plan import QuantPlan
from harness.quant.plan_tables import plan_to_ncnn_table
from harness.quant.profiles import Profile
from harness.quant.tables import NcnnTable, read_ncnn_table

log = logging.getLogger(__name__)


@register_backend
class NcnnBackend(Backend):
    """ncnn int8 (or fp32 without a plan).

    Options: ``threads``; ``winograd``/``sgemm``/``packing`` (ncnn's kernel choices, on by default as
    in ncnn); ``six_bit`` (31/absmax weight scales on the layers ncnn2table gives them: 3x3 stride-1
    dilation-1 Convolution, never depthwise); ``fuse_requantize`` (ncnn2int8's fusion);
    ``int8_inference`` (ncnn's ``use_int8_inference``: an int8 model is refused without it); ``seed``
    of the random input that maps blobs to tensors.
    """

    name: ClassVar[str] = "ncnn"
    description: ClassVar[str] = "Tencent ncnn (pnnx export, ncnn Python runtime, int8 as ncnn2int8 writes it)"

    def __init__(self, *, threads: int = 1, winograd: bool = True, sgemm: bool = True, packing: bool = True,
                 six_bit: bool = False, fuse_requantize: bool = True, int8_inference: bool = True,
                 seed: int = 0) -> None:
        self.options = NcnnOptions(threads=threads, winograd=winograd, sgemm=sgemm, packing=packing,
                                   use_int8_inference=int8_inference)
        self.six_bit = six_bit
        self.fuse_requantize = fuse_requantize
        self.seed = seed
        self.fp32: NcnnRunner | None = None
        self.runner: NcnnRunner | None = None
        self.int8: Int8Model | None = None
        self.layer_names: dict[str, str] = {}  # ncnn layer -> ONNX node display name
        self.scales: dict[str, LayerScales] = {}  # ncnn layer -> the scales written into it
        self._map: TensorMap | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._inputs: dict[str, str] = {}  # ONNX input -> ncnn input blob

    @classmethod
    def available(cls) -> str | None:
        reason = ncnn_available()
        if reason is None and pnnx_executable() is None:
            reason = "the pnnx wheel is not installed (pip install pnnx)"
        return reason

    # --- prepare ----------------------------------------------------------------------------------
    def prepare(self, model: onnx.ModelProto, plan: QuantPlan | None, profile: Profile | None, *,
                work_dir: Path) -> None:
        self.require_available()
        model = onnx.shape_inference.infer_shapes(model)  # the tensor list (what is mapped) needs the types
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = work_dir / "model.onnx"
        onnx.save_model(model, onnx_path)
        param, binary = run_pnnx(onnx_path, work_dir, _input_shapes(model))
        graph, data = read_param(param), binary.read_bytes()
        self.fp32 = NcnnRunner(param, binary, options=self.options, graph=graph)
        inputs = [i.name for i in model.graph.input]
        if len(inputs) != len(graph.input_blobs):
            raise BackendError(f"pnnx made {len(graph.input_blobs)} inputs of the model's {len(inputs)}",
                               expected="one ncnn Input per ONNX input", remedy="report the model to pnnx")
        self._inputs = dict(zip(inputs, graph.input_blobs))  # pnnx numbers inputs in0, in1... in ONNX order
        names, reference = self._map_by_values(model)
        spans = layer_spans(graph, data)
        self.layer_names = match_layers(graph, data, spans, model)
        self.runner = self.fp32
        requantized: dict[str, str] = {}
        if plan is not None:
            scales = self._scales_by_layer(plan_to_ncnn_table(model, plan))
            if self.six_bit:
                weights = ncnn_weights(graph, data, spans)
                layers = {layer.name: layer for layer in graph.layers}
                for name in set(six_bit_layers(graph)) & set(scales):
                    scales[name] = LayerScales(weight=six_bit_scales(weights[name], layers[name].get_int(0)),
                                               bottom=scales[name].bottom)
            self.scales = scales
            self.int8 = quantize_graph(graph, data, scales, fuse_requantize=self.fuse_requantize)
            for note in self.int8.notes:
                log.info("ncnn export: %s", note)
            q_param, q_bin = self.int8.write(work_dir / "model.int8.param", work_dir / "model.int8.bin")
            self.runner = NcnnRunner(q_param, q_bin, options=self.options, code_blobs=self.int8.code_blobs,
                                     graph=self.int8.graph)
            requantized = {t: self.layer_names[self.int8.code_readers[b]] for t, b in names.items()
                           if b in self.int8.code_readers and self.int8.code_readers[b] in self.layer_names}
        unmapped = tuple(t for t in reference if t not in names)
        self._map = TensorMap(names=names, unmapped=unmapped, requantized=requantized)

    def _map_by_values(self, model: onnx.ModelProto) -> tuple[dict[str, str], list[str]]:
        rng = np.random.default_rng(self.seed)
        runner = TapRunner(as_model(model), taps="all", threads=self.options.threads)
        feeds = {name: rng.standard_normal(_shape(model, name)).astype(np.float32) for name in self._inputs}
        reference = {**feeds, **runner.run(feeds)}
        self._shapes = {name: tuple(v.shape) for name, v in reference.items()}
        ncnn_values = self.fp32.run({self._inputs[k]: v for k, v in feeds.items()})
        return match_blobs(ncnn_values, reference), list(reference)

    def _scales_by_layer(self, table: NcnnTable) -> dict[str, LayerScales]:
        by_onnx = {onnx_name: layer for layer, onnx_name in self.layer_names.items()}
        scales, missing = {}, []
        for onnx_name, weight in table.weight_scales.items():
            if onnx_name not in table.activation_scales:
                continue
            layer = by_onnx.get(onnx_name)
            if layer is None:
                missing.append(onnx_name)
                continue
            scales[layer] = LayerScales(weight=weight, bottom=table.activation_scales[onnx_name])
        if missing:
            raise BackendError(f"Got no ncnn layer for {len(missing)} quantised ONNX node(s), e.g. {missing[:3]}",
                               expected="pnnx to keep each quantised Conv/Gemm as one ncnn layer with the same "
                               "weights", remedy="keep these layers in float (float_layers) or report the model")
        return scales

    # --- run --------------------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_prepared(self.runner, self.name)
        return self._run(self.runner, inputs)

    def run_fp32(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same export without int8 (ncnn fp32), mapped the same way."""
        require_prepared(self.fp32, self.name)
        return self._run(self.fp32, inputs)

    def _run(self, runner: NcnnRunner, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = _feeds(self._inputs, inputs)
        wanted = sorted(set(self.tensor_map.names.values()))
        values = runner.run(feeds, blobs=wanted)
        out = {}
        for tensor, blob in self.tensor_map.names.items():
            shape = self._shapes.get(tensor)
            out[tensor] = values[blob].reshape(shape) if shape is not None else values[blob][None]
        return out

    @property
    def tensor_map(self) -> TensorMap:
        require_prepared(self._map, self.name)
        return self._map


def load_ncnn_model(param: str | Path, binary: str | Path, *, table: str | Path | None = None,
                    reference: onnx.ModelProto | None = None, work_dir: Path | None = None,
                    **options: object) -> NcnnBackend:
    """A user's ncnn model as a prepared :class:`NcnnBackend`.

    ``table``: an ncnn ``.table`` (ncnn2table's format, keyed by the ``.param``'s layer names) to
    apply as ncnn2int8 would; refused for a model that is already int8. ``reference``: an ONNX model
    whose tensor names the blobs share (e.g. the Caffe import of the same network); without it
    tensors keep ncnn's blob names. ``work_dir`` receives the int8 files when a table is applied.
    """
    backend = NcnnBackend(**options)  # type: ignore[arg-type]
    backend.require_available()
    param, binary = Path(param), Path(binary)
    graph = read_param(param)
    code_blobs: dict[str, float] = {}
    if table is not None:
        if work_dir is None:
            raise ConfigError("Got an ncnn table to apply and no work_dir", expected="a folder for the int8 files",
                              remedy="pass work_dir=...")
        parsed = read_ncnn_table(table)
        scales = {layer: LayerScales(weight=w, bottom=parsed.activation_scales[layer])
                  for layer, w in parsed.weight_scales.items()
                  if layer in parsed.activation_scales and layer not in parsed.float_layers}
        backend.int8 = quantize_graph(graph, binary.read_bytes(), scales, fuse_requantize=backend.fuse_requantize)
        graph = backend.int8.graph
        param, binary = backend.int8.write(Path(work_dir) / f"{param.stem}.int8.param",
                                           Path(work_dir) / f"{param.stem}.int8.bin")
        code_blobs = backend.int8.code_blobs
    elif graph.is_int8:
        code_blobs = _code_blobs_of_int8(graph, binary.read_bytes())
    runner = NcnnRunner(param, binary, options=backend.options, code_blobs=code_blobs, graph=graph)
    backend.runner = runner
    backend.fp32 = None if graph.is_int8 else runner  # an int8 file has no fp32 twin here
    tensors = [t.name for t in tensor_list(reference, include_inputs=True)] if reference is not None else \
        graph.blob_names
    names = match_names(graph, tensors)
    backend._inputs = {b: b for b in graph.input_blobs}
    backend._map = TensorMap(names=names, unmapped=tuple(t for t in tensors if t not in names))
    return backend


def _code_blobs_of_int8(graph: NcnnGraph, data: bytes) -> dict[str, float]:
    """Blobs holding int8 codes in an ncnn2int8 model: tops of layers with a term above 100, scaled by the
    top scale stored as the last float of the layer's data (and the outputs of a Split right after it)."""
    spans = layer_spans(graph, data)
    consumers = graph.consumers()
    out = {}
    for layer, (start, end) in zip(graph.layers, spans):
        if layer.int8_scale_term <= 100:
            continue
        scale = float(np.frombuffer(data, "<f4", count=1, offset=end - 4)[0])
        out[layer.tops[0]] = scale
        for user in consumers.get(layer.tops[0], []):
            if user.type == "Split":
                out.update({t: scale for t in user.tops})
    return out


def _input_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    return [_shape(model, i.name) for i in model.graph.input]


def _shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    inp = next(i for i in model.graph.input if i.name == name)
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"Got model input {name!r} with shape {dims} (0 = not fixed)",
                          expected="fixed input shapes (pnnx needs inputshape=...)",
                          remedy="export the ONNX model with a fixed input shape, e.g. [1, 3, H, W]")
    return tuple(dims)


def _feeds(inputs_map: Mapping[str, str], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if len(inputs) == 1 and len(inputs_map) == 1:
        return {next(iter(inputs_map.values())): next(iter(inputs.values()))}
    unknown = sorted(set(inputs) - set(inputs_map))
    if unknown:
        raise ConfigError(f"Got inputs {unknown}", expected=f"the model's inputs {sorted(inputs_map)}",
                          remedy="feed the inputs by their ONNX names")
    return {inputs_map[k]: v for k, v in inputs.items()}


__all__ = ["NcnnBackend", "load_ncnn_model"]
