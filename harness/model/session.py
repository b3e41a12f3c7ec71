"""One place that builds onnxruntime sessions, so every session in the harness is set up alike.

Thread counts are always explicit: with several sessions in one process (fp32, simulation, int8
kernels) onnxruntime's default was measured 1.5x slower on these 2-core machines.

Thread spinning stops when a run returns (``session.force_spinning_stop``). onnxruntime's idle
workers otherwise keep spinning for a while after each run, and on 2 cores they steal the CPU
from whatever runs next: numpy work after a run (histogram binning) took 2.8x as long, and two
sessions run alternately took 1.5x as long per run. Spinning *during* a run is kept, so a single
session's forward time is unchanged (measured ratio 1.00, side by side).

A session knows what it runs (``source``): the user's model by path, or a :class:`BuiltModel` the
harness wrote (the QDQ simulation, a BN-folded copy). onnxruntime failing on the latter is the
harness's defect, and the error says so and how to look at that model, instead of sending the user
to check their own model, which loaded and ran fine.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

import onnx
import onnxruntime as ort

from harness.errors import ModelRuntimeError

Optimization = Literal["all", "extended", "basic", "disabled"]

_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

#: Session config entries every session gets (see the module docstring).
SESSION_CONFIG: dict[str, str] = {"session.force_spinning_stop": "1"}


def default_threads() -> int:
    """Threads per session: ``$QUANT_HARNESS_THREADS`` or the machine's core count (at most 4)."""
    value = os.environ.get("QUANT_HARNESS_THREADS")
    if value:
        return max(1, int(value))
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True, kw_only=True)
class BuiltModel:
    """A model the harness built from the user's, named the way an error should name it.

    ``what``: e.g. "the int8 simulation (QDQ) model"; ``origin``: the user's model; ``profile`` and
    ``mode`` (simulate / int8-kernels) when they apply; ``inspect``: how to write the same model to a
    file (a command line), when the caller knows one.
    """

    what: str
    origin: str | None = None
    profile: str | None = None
    mode: str | None = None
    inspect: str | None = None

    def with_mode(self, mode: str) -> "BuiltModel":
        return dataclasses.replace(self, mode=mode)

    def __str__(self) -> str:
        text = f"{self.what} that the harness built"
        if self.origin:
            text += f" from {self.origin}"
        if self.profile:
            text += f" for profile {self.profile!r}"
        return text + (f" ({self.mode} mode)" if self.mode else "")


Source = str | BuiltModel


class _Session(ort.InferenceSession):
    """An InferenceSession whose run failures are :class:`ModelRuntimeError` naming ``source``."""

    def __init__(self, model_bytes: bytes, options: ort.SessionOptions, *, source: Source) -> None:
        super().__init__(model_bytes, options, providers=["CPUExecutionProvider"])
        self.source = source
        # kept only to name the failing node's inputs in an error about a harness-built model
        self._model_bytes = model_bytes if isinstance(source, BuiltModel) else None

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        try:
            return super().run(output_names, input_feed, run_options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped exceptions
            raise session_error(self.source, exc, action="run", model_bytes=self._model_bytes) from exc

    def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> Any:
        try:
            return super().run_with_iobinding(iobinding, run_options)
        except Exception as exc:  # noqa: BLE001
            raise session_error(self.source, exc, action="run", model_bytes=self._model_bytes) from exc


def make_session(
    model_bytes: bytes,
    *,
    threads: int | None = None,
    optimization: Optimization = "all",
    log_severity: int = 3,
    source: Source = "<model>",
) -> ort.InferenceSession:
    """An ``InferenceSession`` on the CPU provider with explicit threads and optimisation level.

    ``log_severity`` defaults to 3 (errors only) because onnxruntime's warnings go straight to
    stderr and would interleave with the harness's own report; tests lower it to check that a
    normalised model raises no warnings at all. Loading or running failures raise
    :class:`ModelRuntimeError` naming ``source``.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _LEVELS[optimization]
    options.log_severity_level = log_severity
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    try:
        return _Session(model_bytes, options, source=source)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped exceptions
        raise session_error(source, exc, action="load", model_bytes=model_bytes) from exc


def session_error(source: Source, exc: BaseException, *, action: Literal["load", "run"],
                  model_bytes: bytes | None = None) -> ModelRuntimeError:
    """The error for onnxruntime failing to ``action`` (load or run) ``source``."""
    detail = str(exc).strip()
    verb = "could not load" if action == "load" else "failed running"
    if not isinstance(source, BuiltModel):
        if action == "load":
            return ModelRuntimeError(f"onnxruntime could not load {source}: {detail}",
                                     expected="a model onnxruntime's CPU provider supports",
                                     remedy="check the op set and custom ops; "
                                            "onnx.checker.check_model(model, full_check=True) narrows it down")
        return ModelRuntimeError(f"onnxruntime failed running {source}: {detail}",
                                 expected="inputs of the shapes and types the model declares",
                                 remedy="check the preprocessing output shape/layout against the model input")
    node = _failing_node(detail, model_bytes)
    how = source.inspect or "quant-harness calibrate MODEL --profile PROFILE ... --qdq-out qdq.onnx"
    return ModelRuntimeError(
        f"onnxruntime {verb} {source}{node}: {' '.join(detail.split()) or type(exc).__name__}",
        expected="a model onnxruntime runs: this one is the harness's own output, not the model you gave, so the "
                 "defect is the harness's",
        remedy=f"report it with the suite file and this message; write the same model for inspection with "
               f"`{how}` and look at that node (e.g. in Netron)")


def _failing_node(message: str, model_bytes: bytes | None) -> str:
    """`` at node 'x' (Add reading 'a', 'up__dq')`` for the node onnxruntime names, or ``""``."""
    match = re.search(r"Name:'([^']*)'", message)
    if match is None:
        return ""
    name = match.group(1)
    try:
        graph = onnx.load_from_string(model_bytes).graph if model_bytes else None
    except Exception:  # noqa: BLE001 - the message stays useful without the details
        graph = None
    node = next((n for n in graph.node if n.name == name), None) if graph is not None else None
    if node is None:
        return f" at node {name!r}"
    return f" at node {name!r} ({node.op_type} reading {', '.join(repr(i) for i in node.input if i)})"
