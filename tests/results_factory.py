"""Schema-valid ``results.json`` dicts (docs/results.md, format_version 1) for report tests.

Four suites cover the report's cases: a passing detection suite with history (and a class name holding
``$_$``, invalid mathtext unless escaped), a failing classification suite whose names are hostile (a layer
called ``<script>alert(1)</script>``, a class with ``"`` and ``&``),
a suite whose checks errored (nothing but an error message), and an expected failure of a layers-only
suite. Values are deterministic so screenshots and tests are stable.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import cv2
import numpy as np

SCRIPT_LAYER = "<script>alert(1)</script>"
HOSTILE_CLASS = 'cat "tabby" & co'


def verdict(check: str, gate: str, passed: bool, observed: float | None, bound: float, *, op: str = ">=",
            source: str = "default: tpu-mlir model_deploy --tolerance 0.8,0.5", subject: str | None = None) -> dict:
    state = "passed" if passed else "FAILED"
    where = f" at {subject}" if subject else ""
    shown = "undefined" if observed is None else f"{observed:.6g}"
    remedy = ("keep the first divergent layer in float ([quant] float_layers), try another calibration method, "
              "or relax it in [gates.layer_overrides] if the loss is accepted")
    return {"check": check, "gate": gate, "passed": passed, "observed": observed, "bound": bound, "op": op,
            "source": source, "least_passing": observed,
            "message": f"{check} {state}{where}: {gate} observed {shown}, required {op} {bound:.6g} ({source})",
            "remedy": "nothing to do" if passed else remedy, "subject": subject, "details": {}}


def layers(names: list[str], op_types: list[str], *, drop_at: int | None, drop: float, bound: float = 0.9,
           seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows, acc = [], 1.0
    for i, (name, op) in enumerate(zip(names, op_types)):
        local = float(1.0 - abs(rng.normal(0, 2e-4)))
        if i == drop_at:
            local -= drop
        acc = acc * local ** 0.5 if i else local
        quantized = op != "Reshape"
        sqnr = float(-10 * np.log10(max(1.0 - acc, 1e-9)) + 3)
        rows.append({
            "index": i, "name": name, "node_name": f"node_{i}_{op}", "op_type": op,
            "acc_cosine": acc, "acc_euclid_similarity": 1 - 4 * (1 - acc), "acc_sqnr_db": sqnr,
            "acc_mae": (1 - acc) * 0.1, "acc_max_abs_error": (1 - acc) * 2,
            "local_cosine": local if quantized else None,
            "local_euclid_similarity": 1 - 4 * (1 - local) if quantized else None,
            "local_sqnr_db": float(-10 * np.log10(max(1.0 - local, 1e-9)) + 3) if quantized else None,
            "local_mae": (1 - local) * 0.1 if quantized else None,
            "local_max_abs_error": (1 - local) if quantized else None,
            "cosine_min": bound, "euclid_min": 0.5, "sqnr_db_min": None, "passed": acc >= bound,
        })
    return rows


def histograms(tensors: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for t in tensors:
        data = np.concatenate([rng.normal(0, 1, 4000), rng.normal(0, 4, 40)])
        counts, edges = np.histogram(data, bins=64)
        out.append({"tensor": t, "edges": edges.tolist(), "counts": counts.tolist(), "clip": [-3.2, 3.2],
                    "log_counts": True})
    return out


def jpeg_b64(width: int = 320, height: int = 240, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 200, np.uint8)
    img[:] = np.linspace(90, 220, width, dtype=np.uint8)[None, :, None]
    for _ in range(3):
        x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        cv2.rectangle(img, (x, y), (x + 50, y + 40), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return base64.b64encode(buf.tobytes()).decode("ascii")


def pr_curve(ap: float, n: int = 40) -> dict:
    recall = np.linspace(0, min(1.0, ap + 0.15), n)
    precision = np.clip(1.0 - (recall / max(ap + 0.2, 1e-3)) ** 3, 0, 1)
    return {"recall": recall.round(4).tolist(), "precision": precision.round(4).tolist()}


def common(name: str, task: str, profile: str, status: str) -> dict[str, Any]:
    return {
        "name": name, "task": task, "description": f"{task} suite {name}", "suite_file": f"suites/{name}.toml",
        "profile": profile, "expect": "pass", "expect_reason": None, "status": status,
        "outcome_ok": status in ("passed", "xfailed"),
        "golden": {"path": f"golden/{name}", "state": "verified"},
        "preprocess": {"size": [300, 300], "mean": [127.5, 127.5, 127.5], "scale": [0.007843] * 3,
                       "channel_order": "RGB", "resize": "bilinear"},
        "quant": {"profile": profile, "calibration": "entropy", "float_layers": [],
                  "resolved": {"bits": 8, "signed": True, "symmetric": True, "granularity": "per-channel",
                               "rounding": "half_away_from_zero", "domain": "uniform"}},
        "gates": {"layer_cosine_min": {"value": 0.9, "source": f"suites/{name}.toml [gates] layer_cosine_min"},
                  "layer_euclid_min": {"value": 0.5, "source": "default: tpu-mlir model_deploy --tolerance 0.8,0.5"},
                  "calibration_drift_max_rel": {"value": 0.05, "source": "default: harness"}},
        "timing_s": {"prepare": 0.8, "calibrate": 4.2, "fp32": 1.1, "quantized": 2.7, "metrics": 0.4},
        "previous": None, "histograms": [], "calibration_drift": [], "probes": [], "layers": [],
        "first_divergent": None, "metrics": None, "checks": [],
        "verdict": verdict("suite", "outcome", status in ("passed", "xfailed"), None, 0, source="suite"),
    }


def detection_suite() -> dict:
    classes = ["person", "car", "dog", "bicycle", "bird $_$"]  # "$_$" is invalid mathtext if not escaped
    ops = ["Conv", "Relu", "Conv", "Relu", "Reshape", "Conv", "Add", "Conv", "Concat", "Softmax"] * 4
    s = common("demo_ssd_ncnn", "detection", "ncnn-int8", "passed")
    s["layers"] = layers([f"backbone/conv{i}_out" for i in range(len(ops))], ops, drop_at=None, drop=0, seed=1)
    s["histograms"] = histograms([s["layers"][i]["name"] for i in (8, 17, 26)], seed=1)
    ap_f, ap_q = [0.82, 0.77, 0.70, 0.65, 0.59], [0.81, 0.74, 0.69, 0.60, 0.58]
    s["metrics"] = {
        "headline": "map", "names": ["map", "map_area"],
        "fp32": {"map": 0.7965, "map_area": 0.81}, "quantized": {"map": 0.7811, "map_area": 0.797},
        "difference": {"map": {"value": 0.0154, "ci_low": 0.004, "ci_high": 0.027, "confidence": 0.95,
                               "n_resamples": 1000},
                       "map_area": {"value": 0.013, "ci_low": None, "ci_high": None, "confidence": None,
                                    "n_resamples": 0}},
        "n_images": 200, "class_names": classes,
        "per_class": {"fp32": ap_f, "quantized": ap_q},
        "pr_curves": {"fp32": [pr_curve(a) for a in ap_f], "quantized": [pr_curve(a) for a in ap_q]},
    }
    s["probes"] = [{"image": f"JPEGImages/00000{k}.jpg", "width": 320, "height": 240, "jpeg_base64": jpeg_b64(seed=k),
                    "fp32": [{"label": 0, "score": 0.93, "box": [20, 30, 140, 200]},
                             {"label": "car", "score": 0.71, "box": [180, 100, 300, 180]}],
                    "quantized": [{"label": 0, "score": 0.88, "box": [22, 28, 138, 204]}]} for k in range(2)]
    s["calibration_drift"] = [{"tensor": f"backbone/conv{i}_out", "golden": 3.0 + i, "current": 3.0 + i * 1.01,
                               "rel_change": (i * 0.01) / (3.0 + i)} for i in range(40)]
    s["checks"] = [{"item": item, "passed": True, "verdicts": [verdict(item, "g", True, 1.0, 0.9)], "error": None}
                   for item in ("leakage", "input-parity", "fp32-golden", "layerwise", "outputs", "metrics",
                                "calibration-drift")]
    s["previous"] = {"status": "passed", "headline": "map", "quantized": 0.7850, "fp32": 0.7965}
    return s


def classification_suite() -> dict:
    classes = ["airplane", HOSTILE_CLASS, "deer", "dog", "frog", "horse"]
    n = 24
    names = [f"layer{i}/Conv_output_0" for i in range(n)]
    names[9] = SCRIPT_LAYER
    ops = ["Conv", "Relu", "Conv", "Add"] * 6
    s = common("resnet_cls_bm1684", "classification", "bm1684-int8", "failed")
    s["layers"] = layers(names, ops, drop_at=9, drop=0.35, bound=0.9, seed=2)
    failed_layers = [r for r in s["layers"] if not r["passed"]]
    fd = s["layers"][9]
    s["first_divergent"] = {"name": fd["name"], "node_name": fd["node_name"], "op_type": fd["op_type"], "index": 9,
                            "acc_cosine": fd["acc_cosine"], "local_cosine": fd["local_cosine"],
                            "inherited_cosine": s["layers"][8]["acc_cosine"], "bound": 0.9, "reason": "local",
                            "remedy": f"[quant] float_layers = [\"{SCRIPT_LAYER}\"]\n"
                                      f"tpu-mlir qtable: {SCRIPT_LAYER} F32"}
    s["histograms"] = histograms([SCRIPT_LAYER, names[10]], seed=2)
    conf_f = np.diag([18, 17, 19, 18, 20, 16]) + 1
    conf_q = conf_f.copy()
    conf_q[1, 1] -= 6
    conf_q[1, 3] += 6
    s["metrics"] = {
        "headline": "top1", "names": ["top1", "top5"],
        "fp32": {"top1": 0.9, "top5": 0.99}, "quantized": {"top1": 0.85, "top5": 0.98},
        "difference": {"top1": {"value": 0.05, "ci_low": 0.02, "ci_high": 0.08, "confidence": 0.95,
                                "n_resamples": 1000},
                       "top5": {"value": 0.01, "ci_low": -0.01, "ci_high": 0.03, "confidence": 0.95,
                                "n_resamples": 1000}},
        "n_images": 120, "class_names": classes, "agreement": 0.93,
        "per_class": {"fp32": [0.9, 0.85, 0.95, 0.9, None, 0.8], "quantized": [0.9, 0.55, 0.95, 0.88, None, 0.8]},
        "confusion": {"fp32": conf_f.tolist(), "quantized": conf_q.tolist()},
    }
    s["probes"] = [{"image": "val/cat_001.jpg", "width": 224, "height": 224, "jpeg_base64": jpeg_b64(224, 224, 5),
                    "fp32": [{"label": c, "score": p} for c, p in zip(classes[1:], (0.8, 0.1, 0.05, 0.03, 0.02))],
                    "quantized": [{"label": c, "score": p} for c, p in
                                  zip(["dog", HOSTILE_CLASS, "deer", "frog", "horse"], (0.5, 0.4, 0.05, 0.03, 0.02))]}]
    layer_verdicts = [verdict("layerwise", "layer_cosine_min", r["passed"], r["acc_cosine"], 0.9,
                              source="suites/resnet_cls_bm1684.toml [gates] layer_cosine_min", subject=r["name"])
                      for r in s["layers"]]
    s["checks"] = [
        {"item": "leakage", "passed": True, "verdicts": [verdict("leakage", "calibration_overlap_max", True, 0, 0,
                                                                 op="<=")], "error": None},
        {"item": "layerwise", "passed": False, "verdicts": layer_verdicts, "error": None},
        {"item": "metrics", "passed": False, "error": None,
         "verdicts": [verdict("metric", "top1_drop_max", False, 0.05, 0.01, op="<=",
                              source="default: Intel Neural Compressor accuracy_criterion (relative 1%)",
                              subject="top1")]},
    ]
    s["verdict"] = verdict("suite", "outcome", False, None, 0, source="suite", subject=SCRIPT_LAYER)
    s["verdict"]["message"] = (f"suite FAILED: {len(failed_layers)} layers below cosine 0.9, first divergent "
                               f"{SCRIPT_LAYER}; top1 drop 0.05 > 0.01")
    s["previous"] = {"status": "passed", "headline": "top1", "quantized": 0.89, "fp32": 0.9}
    return s


def error_suite() -> dict:
    s = common("nnie_broken", "detection", "nnie-int8", "error")
    s["golden"] = {"path": "golden/nnie_broken", "state": "absent"}
    s["checks"] = [{"item": "layerwise", "passed": False, "verdicts": [],
                    "error": {"type": "ModelFormatError",
                              "message": "models/x.onnx is a Git LFS pointer, not an ONNX model. Try: git lfs pull."}}]
    s["timing_s"] = {"prepare": 0.1}
    s["verdict"]["message"] = "suite ERROR: 1 check could not run (layerwise: ModelFormatError)"
    s["verdict"]["remedy"] = "fix the error above, then rerun the suite"
    return s


def xfailed_suite() -> dict:
    ops = ["Conv", "Relu"] * 6
    s = common("tflite_uint8_layers", "layers", "tflite-uint8", "xfailed")
    s["expect"], s["expect_reason"] = "fail", "layerwise"
    s["layers"] = layers([f"t{i}" for i in range(len(ops))], ops, drop_at=5, drop=0.3, bound=0.95, seed=3)
    s["checks"] = [{"item": "layerwise", "passed": False, "error": None,
                    "verdicts": [verdict("layerwise", "layer_cosine_min", False, 0.7, 0.95, subject="t5")]}]
    return s


def make_results(*, copies: int = 1) -> dict:
    """A results dict with the four suites (``copies`` > 1 repeats them under new names, for size checks)."""
    suites = []
    for k in range(copies):
        for s in (detection_suite(), classification_suite(), error_suite(), xfailed_suite()):
            s = copy.deepcopy(s)
            if k:
                s["name"] = f"{s['name']}_{k}"
            suites.append(s)
    return {
        "format_version": 1, "created": "2026-05-09T07:35:25Z", "harness_version": "0.1.0",
        "environment": {"python": "3.11.7", "platform": "Linux-x86_64", "numpy": "2.4.6", "onnx": "1.17.0",
                        "onnxruntime": "1.20.1", "opencv": "5.0.0"},
        "command": "quant-harness run suites/", "passed": False,
        "previous": {"created": "2026-05-08T07:00:00Z", "path": "reports/results.previous.json"},
        "suites": suites,
    }
