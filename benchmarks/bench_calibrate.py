"""Calibration benchmarks on MobileNetV2, ratios measured side by side (issue 3 targets).

    QUANT_HARNESS_REALMODELS=../shared/realmodels .venv/bin/python benchmarks/bench_calibrate.py [--skip-ort]

1. Memory: peak RSS of a KL calibration on 400 images <= 1.1x that on 50. Each run is a fresh
   child process (``resource.getrusage(RUSAGE_CHILDREN)`` of that child only), and images are
   generated on the fly (the 4 real images, flipped, cropped, with noise), so the data itself
   never sits in memory. onnxruntime's ``quantize_static`` (Entropy) on 50 images for contrast.
2. Time: KL calibration (both passes, histograms, threshold search) <= 6x one fp32 forward pass
   over the same 100 images, and >= 10x faster than ``quantize_static`` with Entropy
   (``num_bins`` 2048) on those 100 images (that run needs about 6 GiB; ``--skip-ort`` skips it).
3. The QDQ model in ``simulate`` mode <= 3x the fp32 forward time; ``int8-kernels`` reported too.

The machine is shared, so every ratio compares runs made back to back in the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
class no_spinning:
    """Build sessions with ``session.intra_op.allow_spinning = 0`` while active.

    onnxruntime's idle worker threads spin after each run; on 2 cores they steal the CPU the
    histogram code needs between runs (measured: pass-2 binning 2x slower). ``make_session`` has
    no option for it yet, so the benchmark patches the options class to show the effect.
    """

    def __enter__(self):
        import onnxruntime as ort

        self._orig = ort.SessionOptions
        orig = self._orig

        class Options(orig):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.add_session_config_entry("session.intra_op.allow_spinning", "0")

        ort.SessionOptions = Options
        return self

    def __exit__(self, *exc) -> None:
        import onnxruntime as ort

        ort.SessionOptions = self._orig


def fp32_seconds(model, batches, *, optimization="all") -> float:
    from harness.model import make_session

    session = make_session(model if isinstance(model, bytes) else model.serialized(), threads=THREADS,
                           optimization=optimization)
    session.run(None, {"input": batches[0]})  # warm-up: first run allocates
    t = time.perf_counter()
    for x in batches:
        session.run(None, {"input": x})
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=("calibrate", "ort"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--method", default="kl")
    parser.add_argument("--skip-ort", action="store_true", help="skip the ~6 GiB quantize_static Entropy run")
    args = parser.parse_args()
    if args.child:
        result = child_calibrate(args.n) if args.child == "calibrate" else child_ort(args.n, args.method)
        result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    from harness.model import load_model
    from harness.quant import calibrate_activations, fold_batchnorm, get_profile, quantize_model
    from harness.quant.simulate import MODE_OPTIMIZATION

    print("== memory: KL calibration peak RSS, fresh process each ==")
    small, large = run_child("calibrate", 50), run_child("calibrate", 400)
    print(f"  50 images: {small['rss_mib']:.0f} MiB ({small['seconds']:.1f} s); "
          f"400 images: {large['rss_mib']:.0f} MiB ({large['seconds']:.1f} s); "
          f"ratio {large['rss_mib'] / small['rss_mib']:.3f} (target <= 1.1)")
    ort50 = run_child("ort", 50, "entropy") if not args.skip_ort else {"rss_mib": float("nan"), "seconds": float("nan")}
    if "error" in ort50:
        print(f"  quantize_static Entropy, 50 images: failed: {ort50['error']}")
    else:
        print(f"  quantize_static Entropy, 50 images: {ort50['rss_mib']:.0f} MiB ({ort50['seconds']:.1f} s) "
              f"= {ort50['rss_mib'] / small['rss_mib']:.1f}x ours at 50")

    print("== time: 100 images ==")
    model = load_model(_folder() / "mobilenet_v2.onnx")
    batches = list(image_factory(100)())
    folded, _ = fold_batchnorm(model.proto)
    fp32 = fp32_seconds(model, batches)
    t = time.perf_counter()
    calibrate_activations(folded, get_profile("ncnn-int8"), lambda: iter(batches), threads=THREADS)
    kl_spin = time.perf_counter() - t
    with no_spinning():
        t = time.perf_counter()
        calibrate_activations(folded, get_profile("ncnn-int8"), lambda: iter(batches), threads=THREADS)
        kl = time.perf_counter() - t
    fp32_after = fp32_seconds(model, batches)
    fp32 = min(fp32, fp32_after)
    print(f"  fp32 forward: {fp32:.2f} s ({1000 * fp32 / len(batches):.1f} ms/img); KL calibration: "
          f"{kl_spin:.2f} s as sessions are built today = {kl_spin / fp32:.2f}x; with thread spinning off "
          f"{kl:.2f} s = {kl / fp32:.2f}x (target <= 6)")
    if not args.skip_ort:
        ort = run_child("ort", 100, "entropy")
        if "error" in ort:
            print(f"  quantize_static Entropy (2048 bins), 100 images: failed: {ort['error']}")
        else:
            print(f"  quantize_static Entropy (2048 bins), 100 images: {ort['seconds']:.1f} s, {ort['rss_mib']:.0f} MiB; "
                  f"ours is {ort['seconds'] / kl:.1f}x faster (target >= 10)")

    print("== QDQ model run time, 100 images ==")
    sample = batches[:50]
    fp32 = fp32_seconds(model, sample)
    for name in ("ncnn-int8", "ort-qdq"):
        qm = quantize_model(model, get_profile(name), ranges=None, batches_factory=lambda: iter(batches[:8]),
                            threads=THREADS)
        data = qm.qdq.proto.SerializeToString()
        sim = fp32_seconds(data, sample, optimization=MODE_OPTIMIZATION["simulate"])
        kern = fp32_seconds(data, sample, optimization=MODE_OPTIMIZATION["int8-kernels"])
        print(f"  {name}: simulate {sim / fp32:.2f}x fp32 (target <= 3); int8-kernels {kern / fp32:.2f}x fp32")


if __name__ == "__main__":
    main()
