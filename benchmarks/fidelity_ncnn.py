"""The ncnn fidelity table: the harness's ncnn-int8 simulation against real ncnn, MobileNetV2 and UltraFace RFB-320.

What it measures, per model (the bundled suites' preprocessing and calibration, the 24 UltraFace photos):

* ``fp32 max|d|``: ncnn's fp32 model (pnnx export) against onnxruntime, largest difference over every mapped
  tensor: is the export itself faithful;
* per tensor, real ncnn int8 (the suite's plan exported) against the simulation, in quantisation steps
  (see ``harness.backends.fidelity``): the largest difference, the worst share of elements beyond one step,
  and how many tensors miss the issue's bar (>= 99.9 % within one step);
* task level: top-1 agreement (MobileNetV2) and the face-score cosine (UltraFace, ``scores[..., 1]``) of
  real int8 and simulation against fp32 and against each other; UltraFace also the faces (score >= 0.7,
  upstream demo's NMS) found by one and matched (IoU >= 0.5) by the other.

``--packing off`` / ``--winograd off`` / ``--six-bit`` change ncnn's kernels or the exported weights, to
show which difference comes from where (docs/backends.md has the measured table and the reasons).

    QUANT_HARNESS_REALMODELS=../shared/realmodels python benchmarks/fidelity_ncnn.py [--images 24] [--packing off]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.backends.compare import compare_backend, mean_cosine, top1_agreement  # noqa: E402
from harness.backends.fidelity import cosine  # noqa: E402
from harness.backends.ncnn.backend import NcnnBackend  # noqa: E402
from harness.data import preprocess, read_image  # noqa: E402
from harness.engine.stages import SuiteStages  # noqa: E402
from harness.suite import load_suite  # noqa: E402
from harness.tasks.nms import iou_matrix  # noqa: E402
from harness.tasks.ultraface import decode_ultraface, ultraface_detect, ultraface_priors  # noqa: E402

MODELS = {"mobilenet_v2": "mobilenet_v2_ncnn_int8.toml", "ultraface_rfb320": "ultraface_rfb320_ncnn_int8.toml"}


def faces_matched(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], priors: np.ndarray) -> tuple[int, int]:
    """(faces of ``a`` matched by a face of ``b`` at IoU >= 0.5, faces of ``a``), one image."""
    da = ultraface_detect(a[0][0], decode_ultraface(a[1][0], priors))
    db = ultraface_detect(b[0][0], decode_ultraface(b[1][0], priors))
    if len(da) == 0 or len(db) == 0:
        return 0, len(da)
    return int(np.sum(iou_matrix(da.boxes, db.boxes).max(axis=1) >= 0.5)), len(da)


def measure(name: str, *, images: int, options: dict[str, object]) -> dict[str, object]:
    stages = SuiteStages(load_suite(REPO / "suites" / MODELS[name]), threads=2)
    photos = sorted((Path(os.environ["QUANT_HARNESS_REALMODELS"]) / "ultraface" / "images").glob("*.jpg"))[:images]
    inputs = (preprocess(read_image(p), stages.data.spec)[0][None] for p in photos)
    with tempfile.TemporaryDirectory() as tmp:
        result = compare_backend(stages.folded, stages.quantized.plan, stages.profile, inputs,
                                 backend=NcnnBackend(**options), work_dir=Path(tmp), threads=2)
    s = result.summary
    row: dict[str, object] = {"model": name, "tensors": s.tensors, "fp32_max_abs": result.fp32_max_abs,
                              "max_steps": s.max_steps, "worst_beyond": s.max_beyond_one_step,
                              "failing": len(s.failing), "images": len(photos)}
    out = [o.name for o in stages.folded.graph.output]
    if name == "mobilenet_v2":
        fp32, sim, real = (result.stacked(c, out[0]) for c in ("fp32", "simulate", "real"))
        row["task"] = (f"top-1 vs fp32: sim {top1_agreement(sim, fp32)}/{len(photos)}, real "
                       f"{top1_agreement(real, fp32)}/{len(photos)}; sim vs real {top1_agreement(sim, real)}/"
                       f"{len(photos)}; logits cosine vs fp32: sim {mean_cosine(sim, fp32):.4f}, real "
                       f"{mean_cosine(real, fp32):.4f}")
    else:
        scores = {c: result.stacked(c, "scores") for c in ("fp32", "simulate", "real")}
        boxes = {c: result.stacked(c, "boxes") for c in ("fp32", "simulate", "real")}
        face = {c: v[..., 1] for c, v in scores.items()}
        priors = ultraface_priors()
        matched = np.sum([faces_matched((scores["real"][i], boxes["real"][i]), (scores["simulate"][i],
                                                                                 boxes["simulate"][i]), priors)
                          for i in range(len(photos))], axis=0)
        row["task"] = (f"face-score cosine vs fp32: sim {cosine(face['simulate'], face['fp32']):.5f}, real "
                       f"{cosine(face['real'], face['fp32']):.5f}; sim vs real "
                       f"{cosine(face['simulate'], face['real']):.6f}; real faces found by sim "
                       f"{matched[0]}/{matched[1]}")
    row["notes"] = result.notes
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--packing", choices=("on", "off"), default="on", help="ncnn use_packing_layout")
    parser.add_argument("--winograd", choices=("on", "off"), default="on", help="ncnn use_winograd_convolution")
    parser.add_argument("--six-bit", action="store_true", help="31/absmax weights for 3x3 stride-1 convs (ncnn2table)")
    args = parser.parse_args()
    if not os.environ.get("QUANT_HARNESS_REALMODELS"):
        sys.exit("set QUANT_HARNESS_REALMODELS to ../shared/realmodels")
    options = {"packing": args.packing == "on", "winograd": args.winograd == "on", "six_bit": args.six_bit, "threads": 2}
    print(f"ncnn options: {options}")
    print(f"{'model':18s} {'tensors':>7s} {'fp32 max|d|':>11s} {'max steps':>9s} {'worst >1 step':>13s} "
          f"{'tensors < 99.9%':>15s}  task")
    for name in args.models:
        r = measure(name, images=args.images, options=options)
        print(f"{r['model']:18s} {r['tensors']:7d} {r['fp32_max_abs']:11.2e} {r['max_steps']:9.1f} "
              f"{r['worst_beyond']:13.2%} {r['failing']:15d}  {r['task']}")
        for note in r["notes"]:
            print(f"  note: {note}")


if __name__ == "__main__":
    main()
