"""One place that builds onnxruntime sessions, so every session in the harness is set up alike.

Thread counts are always explicit: with several sessions in one process (fp32, simulation, int8
kernels) onnxruntime's default was measured 1.5x slower on these 2-core machines.

Thread spinning stops when a run returns (``session.force_spinning_stop``). onnxruntime's idle
workers otherwise keep spinning for a while after each run, and on 2 cores they steal the CPU
from whatever runs next: numpy work after a run (histogram binning) took 2.8x as long, and two
sessions run alternately took 1.5x as long per run. Spinning *during* a run is kept, so a single
session's forward time is unchanged (measured ratio 1.00, side by side).
"""

from __future__ import annotations

import os
from typing import Literal

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


def make_session(
    model_bytes: bytes,
    *,
    threads: int | None = None,
    optimization: Optimization = "all",
    log_severity: int = 3,
    source: str = "<model>",
) -> ort.InferenceSession:
    """An ``InferenceSession`` on the CPU provider with explicit threads and optimisation level.

    ``log_severity`` defaults to 3 (errors only) because onnxruntime's warnings go straight to
    stderr and would interleave with the harness's own report; tests lower it to check that a
    normalised model raises no warnings at all.
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
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped exceptions
        raise ModelRuntimeError(
            f"onnxruntime could not load {source}: {exc}",
            expected="a model onnxruntime's CPU provider supports",
            remedy="check the op set and custom ops; onnx.checker.check_model(model, full_check=True) narrows it down",
        ) from exc
