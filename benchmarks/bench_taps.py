"""Forward time with every tensor tapped vs a plain session, MobileNetV2, same process.

What it measures: the wall time of one forward pass of MobileNetV2 (batch 1, 2 onnxruntime
threads, all graph optimisations) in three sessions built by ``make_session``:

* ``plain``: the model as it is, ``session.run``;
* ``taps``: :class:`TapRunner` with ``taps="all"`` (every float activation, 100 tensors, 52 MB per
  image), outputs written into preallocated buffers through IOBinding (``run_views``);
* ``naive``: every tensor added to the graph outputs, ``session.run`` (fresh arrays every call).

The three run interleaved (plain, taps, naive, plain, ...) so a noisy neighbour hits them alike;
each repetition's median per variant gives one ratio to plain, and the script prints the median
of those ratios and their spread. Target (issue 2): taps <= 1.5x plain.

Interleaving is only fair because sessions stop spinning when a run returns
(``session.force_spinning_stop``, see :mod:`harness.model.session`): before that the idle threads
of the session that ran last stole a core from the next one, and plain runs measured 3x their
stand-alone time, which made the ratio look better than it is.

``--profile`` adds onnxruntime's per-operator time for the plain and tapped sessions: where the
extra time goes (ReorderOutput: each tap converted out of the blocked NCHWc layout; Clip no longer
fused into the Conv; ReorderInput back into NCHWc for the next Conv).

    QUANT_HARNESS_REALMODELS=../shared/realmodels python benchmarks/bench_taps.py [--reps 9] [--runs 25] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.model import TapRunner, load_model, make_session, tensor_list  # noqa: E402
from harness.model.runner import _with_outputs  # noqa: E402


def interleaved_medians(fns: dict[str, Callable[[], object]], reps: int, runs: int) -> dict[str, list[float]]:
    """Per repetition, the median seconds of ``runs`` interleaved calls of each function."""
    for fn in fns.values():  # warm-up: first runs allocate and plan
        fn()
        fn()
    medians: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(runs):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        for name, values in samples.items():
            medians[name].append(statistics.median(values))
    return medians


def naive_session(model, threads: int):
    """Every tensor as a graph output, run with ``session.run`` (what the TapRunner improves on)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for info in tensor_list(model.proto):
        if info.name not in model.output_names:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(info.name))
    return make_session(proto.SerializeToString(), threads=threads)


def operator_times(model_bytes: bytes, x: np.ndarray, threads: int, runs: int = 30) -> dict[str, float]:
    """onnxruntime's profiler: mean microseconds per run spent in each operator type."""
    import onnxruntime as ort

    from harness.model.session import SESSION_CONFIG

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "bench_taps_profile")
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"input": x})
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / runs
    return dict(sorted(per_op.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="repetitions (one ratio each)")
    parser.add_argument("--runs", type=int, default=25, help="interleaved runs per repetition")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print onnxruntime's time per operator type")
    args = parser.parse_args()
    root = Path(os.environ.get("QUANT_HARNESS_REALMODELS", "../shared/realmodels"))
    model = load_model(root / "mobilenet_v2" / "mobilenet_v2.onnx")
    x = np.random.default_rng(0).uniform(-2, 2, (1, 3, 224, 224)).astype(np.float32)

    plain = make_session(model.serialized(), threads=args.threads)
    runner = TapRunner(model, taps="all", threads=args.threads)
    naive = naive_session(model, args.threads)
    medians = interleaved_medians(
        {
            "plain": lambda: plain.run(None, {"input": x}),
            "taps": lambda: runner.run_views(x),
            "naive": lambda: naive.run(None, {"input": x}),
        },
        args.reps,
        args.runs,
    )
    print(f"MobileNetV2, {len(runner.tensors)} tensors tapped, {args.threads} threads; "
          f"{args.reps} repetitions x {args.runs} interleaved runs")
    for name, values in medians.items():
        ratios = [v / p for v, p in zip(values, medians["plain"])]
        print(f"  {name:6s} {statistics.median(values) * 1e3:7.2f} ms   ratio to plain: median {statistics.median(ratios):.3f}, "
              f"range [{min(ratios):.3f}, {max(ratios):.3f}]")
    if args.profile:
        tapped, _ = _with_outputs(model.proto, [t.name for t in runner.tensors])
        for name, data in (("plain", model.serialized()), ("taps", tapped.SerializeToString())):
            times = operator_times(data, x, args.threads)
            print(f"  onnxruntime profile, {name}: {sum(times.values()):.0f} us/run in kernels: "
                  + ", ".join(f"{op} {us:.0f}" for op, us in times.items() if us >= 10))


if __name__ == "__main__":
    main()
