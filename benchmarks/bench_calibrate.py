"""Calibration benchmarks on MobileNetV2, ratios measured side by side (issue 3 targets).

    QUANT_HARNESS_REALMODELS=../shared/realmodels .venv/bin/python benchmarks/bench_calibrate.py \
        [--skip-ort] [--skip-memory] [--reps 5] [--n 100]

1. Memory: peak RSS of a KL calibration on 400 images <= 1.1x that on 50. Each run is a fresh
   child process (``resource.getrusage(RUSAGE_CHILDREN)`` of that child only), and images are
   generated on the fly (the 4 real images, flipped, cropped, with noise), so the data itself
   never sits in memory. onnxruntime's ``quantize_static`` (Entropy) on 50 images for contrast.
2. Time: KL calibration of the ncnn-int8 sites (both passes, histograms, threshold search;
   ``run_calibrators`` with its defaults, 2 threads) <= 6x one fp32 forward pass over the same
   100 images (``session.run`` of a plain session, 2 threads; issue 18's goal is <= 5x). With numba (the
   `fast` extra) the histogram pass bins in compiled loops; the numpy binning is timed alongside. Repeated ``--reps`` times; each
   repetition's ratio uses the fp32 pass timed right before and after it (the faster of the two),
   and the median and range of the ratios are printed, with the median run's split by phase. The
   same calibration with one session (``overlap=False``) is timed alongside for contrast. Then
   >= 10x faster than ``quantize_static`` with Entropy (``num_bins`` 2048) on those 100 images,
   against the median of ours (that run needs about 6 GiB and 30-80 s; ``--skip-ort`` skips it).
3. The QDQ model (ncnn-int8 and ort-qdq profiles) over 50 images: ``simulate`` as
   ``mode_session`` builds it <= 3x the fp32 forward time; ``int8-kernels`` and the written model
   run with optimisations off (what ``simulate`` was before its weights were folded) for contrast.
   Each session's pass is timed between two fp32 passes (the faster is its denominator), ``--reps``
   times; median and range of the ratios. Whole passes, not image-by-image turns: a session that
   runs on its own keeps its weights in cache, as an evaluation loop over one model does.

The machine is shared, so every ratio compares runs made back to back in the same conditions.
The fp32 pass is short (0.5 s), so a burst of load from elsewhere during both fp32 passes of a
repetition inflates the denominator and makes the calibration look up to 2x better than it is
(seen while the other engineer's tests ran: ratios of 3.3-3.8x whose own phases showed a 2 s fp32
pass). Trust runs on an idle machine, and compare versions by running them alternately.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THREADS = 2


def _folder() -> Path:
    value = os.environ.get("QUANT_HARNESS_REALMODELS")
    if not value:
        sys.exit("set QUANT_HARNESS_REALMODELS to ../shared/realmodels")
    return Path(value) / "mobilenet_v2"


def _spec():
    from harness.data import PreprocessSpec

    return PreprocessSpec(size=(224, 224), channel_order="rgb", resize="short_side", short_side=256,
                          mean=(0.485 * 255, 0.456 * 255, 0.406 * 255), std=(0.229 * 255, 0.224 * 255, 0.225 * 255))


def image_factory(n: int):
    """A factory yielding ``n`` augmented [1,3,224,224] images, generated deterministically per index."""
    from harness.data import list_images, preprocess, read_image

    raw = [read_image(p) for p in list_images(_folder() / "images")]
    spec = _spec()

    def make(i: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        image = raw[i % len(raw)]
        if (i // len(raw)) % 2:
            image = image[:, ::-1]
        h, w = image.shape[:2]
        f = rng.uniform(0.6, 1.0)
        ch, cw = int(h * f), int(w * f)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out = preprocess(np.ascontiguousarray(image[y:y + ch, x:x + cw]), spec)[0][None]
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(0.05)
        return out

    return lambda: (make(i) for i in range(n))


# --- child processes ------------------------------------------------------------------------------
def child_calibrate(n: int) -> dict:
    from harness.model import load_model
    from harness.quant import calibrate_activations, fold_batchnorm, get_profile

    model = load_model(_folder() / "mobilenet_v2.onnx")
    folded, _ = fold_batchnorm(model.proto)
    t = time.perf_counter()
    ranges = calibrate_activations(folded, get_profile("ncnn-int8"), image_factory(n), threads=THREADS)
    return {"seconds": time.perf_counter() - t, "tensors": len(ranges)}


def child_ort(n: int, method: str) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    from harness.model import load_model

    factory = image_factory(n)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = factory()

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m.onnx"
        import onnx

        onnx.save(load_model(_folder() / "mobilenet_v2.onnx").proto, src)
        extra = {"CalibNumBins": 2048} if method == "entropy" else {}
        t = time.perf_counter()
        quantize_static(str(src), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.MinMax,
                        extra_options=extra)
        return {"seconds": time.perf_counter() - t}


def run_child(kind: str, n: int, method: str = "") -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON plus its peak RSS in MiB."""
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--method", method or "kl"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # ru_maxrss of RUSAGE_CHILDREN is the max over waited children; the child reports its own too
    result.setdefault("rss_mib", max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)
    return result


# --- in-process timings ---------------------------------------------------------------------------
def session_seconds(session, batches) -> float:
    """Seconds for one pass of ``session`` over ``batches`` (after one warm-up run)."""
    session.run(None, {"input": batches[0]})  # warm-up: first run allocates
    t = time.perf_counter()
    for x in batches:
        session.run(None, {"input": x})
    return time.perf_counter() - t


def fp32_session(model):
    from harness.model import make_session

    return make_session(model.serialized(), threads=THREADS)


def timed_calibration(folded, batches, *, overlap: bool | None = None) -> dict[str, float]:
    """One KL calibration (ncnn-int8 sites): total seconds and the split by phase.

    The phases come from the progress callback: the range pass ends with its last batch, the
    histogram pass with its last batch, and the rest is the threshold search (``compute``).
    """
    from harness.quant import get_profile
    from harness.quant.calibration import placement_for, run_calibrators
    from harness.quant.calibrate import make_calibrator

    profile = get_profile("ncnn-int8")
    tensors = placement_for(folded, profile).tensors_to_calibrate()
    calibrators = {t: make_calibrator(profile.activation_method, **profile.activation_params) for t in tensors}
    last: dict[str, float] = {}
    start = time.perf_counter()
    run_calibrators(folded, calibrators, lambda: iter(batches), threads=THREADS, overlap=overlap,
                    progress=lambda phase, n: last.__setitem__(phase, time.perf_counter()))
    end = time.perf_counter()
    return {"total": end - start, "range": last["range"] - start,
            "histogram": last["histogram"] - last["range"], "compute": end - last["histogram"]}


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}x, range [{min(values):.2f}, {max(values):.2f}]"


def time_section(model, batches, reps: int) -> float:
    """KL calibration vs one fp32 pass, ``reps`` times side by side; returns the median KL seconds."""
    from harness.quant import fold_batchnorm

    folded, _ = fold_batchnorm(model.proto)
    fp32 = fp32_session(model)
    from harness.quant.calibrate import kernels

    ratios: dict[str, list[float]] = {"kl": [], "kl, one session (overlap off)": []}
    if kernels.available():  # the numpy binning (the fallback without the `fast` extra) side by side
        ratios["kl, numpy binning"] = []
    runs: list[dict[str, float]] = []
    for _ in range(reps):
        before = session_seconds(fp32, batches)
        run = timed_calibration(folded, batches)
        sequential = timed_calibration(folded, batches, overlap=False)
        if "kl, numpy binning" in ratios:
            os.environ[kernels.DISABLE_ENV] = "1"
            numpy_run = timed_calibration(folded, batches)
            os.environ.pop(kernels.DISABLE_ENV)
        base = min(before, session_seconds(fp32, batches))
        runs.append({k: v / base for k, v in run.items()} | {"seconds": run["total"], "fp32": base})
        ratios["kl"].append(run["total"] / base)
        ratios["kl, one session (overlap off)"].append(sequential["total"] / base)
        if "kl, numpy binning" in ratios:
            ratios["kl, numpy binning"].append(numpy_run["total"] / base)
    mid = sorted(runs, key=lambda r: r["total"])[len(runs) // 2]
    print(f"  fp32 forward: {mid['fp32']:.2f} s ({1000 * mid['fp32'] / len(batches):.1f} ms/img); "
          f"{reps} repetitions, each ratio against the fp32 pass run next to it")
    for name, values in ratios.items():
        print(f"  {name}: {_spread(values)} one fp32 pass (target <= 5)")
    print(f"  median run by phase (x one fp32 pass): range pass {mid['range']:.2f}, histogram pass "
          f"{mid['histogram']:.2f}, thresholds {mid['compute']:.2f}")
    return statistics.median(r["seconds"] for r in runs)


def qdq_section(model, batches, reps: int) -> None:
    """QDQ model run time in both modes vs fp32: ``reps`` repetitions, each session's pass over
    ``batches`` timed between two fp32 passes (the faster of those is its denominator)."""
    from harness.model import make_session
    from harness.quant import get_profile, quantize_model
    from harness.quant.simulate import MODE_OPTIMIZATION, mode_session

    fp32 = fp32_session(model)
    for name in ("ncnn-int8", "ort-qdq"):
        qm = quantize_model(model, get_profile(name), ranges=None, batches_factory=lambda: iter(batches[:8]),
                            threads=THREADS)
        sessions = {
            "simulate": mode_session(qm.qdq, "simulate", threads=THREADS),
            "int8-kernels": mode_session(qm.qdq, "int8-kernels", threads=THREADS),
            "written model, optimisations off": make_session(qm.qdq.proto.SerializeToString(), threads=THREADS,
                                                             optimization=MODE_OPTIMIZATION["simulate"]),
        }
        ratios: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(reps):
            for key, session in sessions.items():
                before = session_seconds(fp32, batches)
                seconds = session_seconds(session, batches)
                ratios[key].append(seconds / min(before, session_seconds(fp32, batches)))
        print(f"  {name}: " + "; ".join(f"{key} {_spread(values)}" for key, values in ratios.items())
              + " fp32 (simulate target <= 3)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=("calibrate", "ort"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--method", default="kl")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the in-process timings")
    parser.add_argument("--skip-ort", action="store_true", help="skip the ~6 GiB quantize_static Entropy run")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-RSS child processes")
    args = parser.parse_args()
    if args.child:
        result = child_calibrate(args.n) if args.child == "calibrate" else child_ort(args.n, args.method)
        result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    from harness.model import load_model

    if not args.skip_memory:
        print("== memory: KL calibration peak RSS, fresh process each ==")
        small, large = run_child("calibrate", 50), run_child("calibrate", 400)
        print(f"  50 images: {small['rss_mib']:.0f} MiB ({small['seconds']:.1f} s); "
              f"400 images: {large['rss_mib']:.0f} MiB ({large['seconds']:.1f} s); "
              f"ratio {large['rss_mib'] / small['rss_mib']:.3f} (target <= 1.1)")
        if not args.skip_ort:
            ort50 = run_child("ort", 50, "entropy")
            if "error" in ort50:
                print(f"  quantize_static Entropy, 50 images: failed: {ort50['error']}")
            else:
                print(f"  quantize_static Entropy, 50 images: {ort50['rss_mib']:.0f} MiB ({ort50['seconds']:.1f} s) "
                      f"= {ort50['rss_mib'] / small['rss_mib']:.1f}x ours at 50")

    print(f"== time: {args.n} images ==")
    model = load_model(_folder() / "mobilenet_v2.onnx")
    batches = list(image_factory(args.n)())
    kl_seconds = time_section(model, batches, args.reps)
    if not args.skip_ort:
        ort = run_child("ort", args.n, "entropy")
        if "error" in ort:
            print(f"  quantize_static Entropy (2048 bins), {args.n} images: failed: {ort['error']}")
        else:
            print(f"  quantize_static Entropy (2048 bins), {args.n} images: {ort['seconds']:.1f} s, {ort['rss_mib']:.0f} MiB; "
                  f"ours ({kl_seconds:.2f} s, median) is {ort['seconds'] / kl_seconds:.1f}x faster (target >= 10)")

    print("== QDQ model run time, 50 images ==")
    qdq_section(model, batches[:50], args.reps)


if __name__ == "__main__":
    main()
