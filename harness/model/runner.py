"""Run a model with "layer taps": intermediate tensors exposed as outputs of one session.

One session computes everything, so each image is decoded and run once however many tensors are
compared. Results are streamed: each batch's tensors go to a callback and are then overwritten by
the next batch, so memory stays flat over any number of images (MobileNetV2 exposes about 50 MB
of activations per image; keeping them all is what runs other calibrators out of memory).

Exactness. Exposing a tensor as an output can stop onnxruntime from fusing the node that makes it
(a Conv whose output is tapped is no longer fused with the Clip after it), and a fused kernel
rounds differently in the last bits. The graph outputs of a tapped session therefore match an
untapped session only to about 1e-6 relative (about 5e-7 measured on MobileNetV2's logits), not
bit-for-bit. Compare tapped results with tapped results, and use an untapped session when the
graph outputs must be bit-identical to a plain deployment run.

One fusion changes much more than the last bit: folding a BatchNormalization into the Conv (or
Gemm) before it rewrites the weights. Tapping that Conv's output blocks the folding and moved
UltraFace's outputs by 4e-6 relative. Such a tensor is therefore tapped on a *shadow* copy of its
producer (same inputs and attributes, output ``<name>__tap``), so the original Conv->BN chain is
still folded; the tap is still the true Conv output, at the price of computing that Conv twice.

Cost. Tapping every tensor also makes onnxruntime convert each one out of its blocked (NCHWc)
layout, so an all-taps forward costs more than a plain one; ``benchmarks/bench_taps.py`` measures
the ratio (MobileNetV2, all 100 tensors: about 1.7x). onnxruntime's profile of that run puts the
extra time in kernels, not in this class: ReorderOutput for each tap (3.0 ms of 12 ms per image),
the Clip that is no longer fused into its Conv (2.2 ms) and ReorderInput back into NCHWc for the
next Conv (1.0 ms): 52 MB of outputs per image, bound by memory bandwidth. Measured and dropped:
a session with every output as a graph output and fresh arrays per run (no faster), optimisation
level "extended" (no NCHWc: 2.6x), onnxruntime's parallel executor (2x-3.9x), shadow Convs so the
main path keeps Conv+Clip fused (2.0x-2.4x: the Conv is paid twice), one huge-page arena for the
output buffers (1-2 %, within noise). Choose a subset of taps to pay less.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from harness.errors import ConfigError
from harness.model.graph import FLOAT_TYPES, TensorInfo, tensor_list
from harness.model.load import Model
from harness.model.session import Optimization, Source, make_session

Feeds = Mapping[str, np.ndarray]
TapSelection = Literal["all", "none"] | Sequence[str]


@dataclass(frozen=True)
class TapBatch(Mapping[str, np.ndarray]):
    """The tensors of one batch, in topological order, as read-only views.

    The arrays are the runner's reusable buffers: they are valid only inside the callback that
    receives them. Copy (``np.array(batch[name])``) what must outlive it.
    """

    index: int
    tensors: dict[str, np.ndarray] = field(repr=False)
    infos: Mapping[str, TensorInfo] = field(repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class TapRunner:
    """fp32 runner exposing every float activation (or a chosen subset) of ``model``.

    ``taps``: ``"all"`` (every float activation), ``"none"`` (graph outputs only) or a list of
    tensor names. Graph outputs are always included, last-in-order where they fall topologically.
    ``any_dtype``: allow integer tensors in a list of taps (a QDQ model's int8 codes).
    ``source``: what errors call the model (default: its path; a ``BuiltModel`` for one the harness wrote).
    """

    def __init__(
        self,
        model: Model,
        *,
        taps: TapSelection = "all",
        threads: int | None = None,
        optimization: Optimization = "all",
        any_dtype: bool = False,
        source: Source | None = None,
    ) -> None:
        self.model = model
        all_tensors = tensor_list(model.proto, float_only=not any_dtype)
        self.tensors: list[TensorInfo] = _select(all_tensors, taps, model.output_names)
        self.infos: dict[str, TensorInfo] = {t.name: t for t in self.tensors}
        tapped, self._alias = _with_outputs(model.proto, [t.name for t in self.tensors])
        self.session = make_session(
            tapped.SerializeToString(), threads=threads, optimization=optimization,
            source=str(model.path) if source is None else source,
        )
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._binding = self.session.io_binding()
        self._buffers: dict[str, np.ndarray] = {}
        self._buffer_key: tuple[tuple[int, ...], ...] | None = None

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    def run(self, feeds: Feeds | np.ndarray) -> dict[str, np.ndarray]:
        """One batch; returns owned copies of every tapped tensor, in topological order."""
        return {name: np.array(arr) for name, arr in self.run_views(feeds).items()}

    def run_views(self, feeds: Feeds | np.ndarray) -> dict[str, np.ndarray]:
        """One batch without copies: views valid until the next call (what ``stream`` hands out)."""
        return self._run(self._as_feeds(feeds))

    def stream(
        self,
        batches: Iterable[Feeds | np.ndarray],
        callback: Callable[[TapBatch], None],
    ) -> int:
        """Run every batch and hand its tensors to ``callback``; returns the number of batches.

        The tensors passed to the callback are views into buffers reused by the next batch.
        """
        count = 0
        for index, batch in enumerate(batches):
            views = self.run_views(batch)
            callback(TapBatch(index=index, tensors=views, infos=self.infos))
            count += 1
        return count

    # -- internals ------------------------------------------------------------------------------
    def _as_feeds(self, batch: Feeds | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(batch, np.ndarray):
            if len(self._inputs) != 1:
                raise ConfigError(
                    f"Got one array for a model with inputs {list(self._inputs)}",
                    expected="a dict mapping every input name to an array",
                    remedy="pass {name: array} for each input",
                )
            batch = {next(iter(self._inputs)): batch}
        unknown = set(batch) - set(self._inputs)
        missing = set(self._inputs) - set(batch)
        if unknown or missing:
            raise ConfigError(
                f"Got inputs {sorted(batch)} for a model whose inputs are {sorted(self._inputs)}",
                expected="exactly the model's input names",
                remedy="rename the feeds; the model's inputs are listed above",
            )
        feeds: dict[str, np.ndarray] = {}
        for name, value in batch.items():
            expected = _np_dtype(self._inputs[name].type)
            arr = np.ascontiguousarray(value)
            if arr.dtype != expected:
                raise ConfigError(
                    f"Input {name!r} has dtype {arr.dtype}",
                    expected=f"{expected} as the model declares",
                    remedy="set the preprocessing dtype to match the model input",
                )
            _check_shape(name, arr.shape, self._inputs[name].shape)
            feeds[name] = arr
        return feeds

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = tuple(tuple(feeds[name].shape) for name in self._inputs)
        if key != self._buffer_key:
            self._allocate(feeds, key)
        for name, arr in feeds.items():
            self._binding.bind_cpu_input(name, arr)
        self.session.run_with_iobinding(self._binding)  # failures: ModelRuntimeError naming the source
        return {name: self._buffers[self._alias.get(name, name)] for name in self.infos}

    def _allocate(self, feeds: dict[str, np.ndarray], key: tuple[tuple[int, ...], ...]) -> None:
        """Learn every output's shape once per input-shape signature and bind owned buffers.

        The buffers live on ``self`` for as long as they are bound: onnxruntime keeps raw pointers
        to them, and letting one be garbage-collected makes the next run write into freed memory.
        """
        results = self.session.run(self._output_names, feeds)
        self._binding.clear_binding_outputs()
        buffers = {}
        for name, value in zip(self._output_names, results):
            buf = np.empty_like(value)
            self._binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
            buffers[name] = buf
        self._buffers = buffers
        self._buffer_key = key


def _select(all_tensors: list[TensorInfo], taps: TapSelection, outputs: list[str]) -> list[TensorInfo]:
    by_name = {t.name: t for t in all_tensors}
    missing_outputs = [o for o in outputs if o not in by_name]
    if missing_outputs:  # a graph output that is a graph input or an initializer: nothing to tap
        raise ConfigError(
            f"Graph outputs {missing_outputs} are not produced by any node",
            expected="outputs computed by the graph",
            remedy="remove pass-through outputs from the model",
        )
    if taps == "all":
        wanted = {t.name for t in all_tensors if t.elem_type in FLOAT_TYPES}
    elif taps == "none":
        wanted = set()
    else:
        unknown = [n for n in taps if n not in by_name]
        if unknown:
            raise ConfigError(
                f"Tap names {unknown[:5]} are not float activations of the model",
                expected=f"names such as {[t.name for t in all_tensors[:3]]}",
                remedy="list tensors with harness.model.tensor_list(model.proto)",
            )
        wanted = set(taps)
    wanted.update(outputs)
    selected = [t for t in all_tensors if t.name in wanted]
    return [TensorInfo(i, t.name, t.node_name, t.op_type, t.elem_type, t.shape) for i, t in enumerate(selected)]


#: Producers whose fusion with a following BatchNormalization rewrites weights (see module doc).
_FOLDS_INTO = frozenset({"Conv", "ConvTranspose", "Gemm"})
SHADOW_SUFFIX = "__tap"


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``proto`` exposing ``names``; returns it and {tensor name: output name} for shadows."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    graph = tapped.graph
    existing = {o.name for o in graph.output}
    value_infos = {v.name: v for v in graph.value_info}
    producers = {out: node for node in graph.node for out in node.output}
    feeds_bn = {i for node in graph.node if node.op_type == "BatchNormalization" for i in node.input[:1]}
    alias: dict[str, str] = {}
    for name in names:
        if name in existing:
            continue
        producer = producers.get(name)
        exposed = name
        if producer is not None and producer.op_type in _FOLDS_INTO and name in feeds_bn:
            exposed = name + SHADOW_SUFFIX
            shadow = onnx.NodeProto()
            shadow.CopyFrom(producer)
            shadow.name = (producer.name or name) + SHADOW_SUFFIX
            shadow.output[:] = [exposed]
            graph.node.append(shadow)
            alias[name] = exposed
        info = value_infos.get(name)
        if info is not None:
            info = onnx.ValueInfoProto(name=exposed, type=info.type)
        graph.output.append(info or onnx.helper.make_empty_tensor_value_info(exposed))
    return tapped, alias


def _check_shape(name: str, shape: tuple[int, ...], declared: list[int | str | None]) -> None:
    ok = len(shape) == len(declared) and all(not isinstance(d, int) or d == s for d, s in zip(declared, shape))
    if not ok:
        raise ConfigError(
            f"Input {name!r} has shape {list(shape)}",
            expected=f"{declared} as the model declares (strings are free dimensions)",
            remedy="check the preprocessing size and layout (NCHW vs NHWC) against the model input",
        )


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _np_dtype(ort_type: str) -> np.dtype:
    return np.dtype(_ORT_TYPES.get(ort_type, np.float32))
