"""Forward time with every tensor tapped vs a plain session, MobileNetV2, same process.

Prints the median of interleaved repeated runs and their ratio. Target (issue 2): all-taps
forward <= 1.5x the plain forward. A naive all-outputs session (``session.run`` with every tensor
added to the graph outputs, fresh output arrays each call) is measured too, for contrast.

    QUANT_HARNESS_REALMODELS=../shared/realmodels python benchmarks/bench_taps.py [--reps 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from harness.model import TapRunner, load_model, make_session, tensor_list


def _median_ms(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up: first runs allocate and plan
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):  # interleaved, so a noisy neighbour hits every variant alike
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    root = Path(os.environ.get("QUANT_HARNESS_REALMODELS", "../shared/realmodels"))
    model = load_model(root / "mobilenet_v2" / "mobilenet_v2.onnx")
    x = np.random.default_rng(0).uniform(-2, 2, (1, 3, 224, 224)).astype(np.float32)

    plain = make_session(model.serialized(), threads=args.threads)
    runner = TapRunner(model, taps="all", threads=args.threads)
    naive_proto = onnx.ModelProto()
    naive_proto.CopyFrom(model.proto)
    for info in tensor_list(model.proto):
        if info.name not in model.output_names:
            naive_proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(info.name))
    naive = make_session(naive_proto.SerializeToString(), threads=args.threads)

    times = _median_ms(
        {
            "plain": lambda: plain.run(None, {"input": x}),
            "taps": lambda: runner.run_views(x),
            "naive": lambda: naive.run(None, {"input": x}),
        },
        args.reps,
    )
    print(f"MobileNetV2, {len(runner.tensors)} tensors tapped, {args.threads} threads, median of {args.reps} interleaved runs")
    for name, ms in times.items():
        print(f"  {name:6s} {ms:7.2f} ms   ratio to plain {ms / times['plain']:.3f}")


if __name__ == "__main__":
    main()
