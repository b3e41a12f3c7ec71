"""The bundled demo models and evaluation data under ``suites/assets/`` (no retraining).

Checks that the committed files are what ``suites/assets/README.md`` says: ONNX opset 13 models with
BatchNormalization nodes (so the harness's BN folding is exercised), documented input/output names and
shapes, a prior count that matches ``harness.tasks.prior_boxes`` for the documented PriorBox parameters,
size budgets, and fp32 accuracy floors through the harness pipeline (``tools/evaluate_assets.py``): the
detector's mAP bar on the full detection test split, the classifier's top-1 on a subset.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from harness.data import ClassFolderDataset, VOCDataset
from harness.model import load_model, make_session

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "suites" / "assets"
DETECTOR = ASSETS / "ssdlite_shapes.onnx"
CLASSIFIER = ASSETS / "resnet_shapes.onnx"
MODEL_BUDGET_BYTES = 5 * 1024 * 1024
ASSETS_BUDGET_BYTES = 15 * 1024 * 1024

# Floors for the fp32 checks (measured values in suites/assets/README.md). The detector's is the bar the
# bundled model must meet, on the whole test split (about 2 s); the classifier's sits below the measured
# value with a margin for onnxruntime version noise. Both are high enough that a broken pipeline (wrong box
# convention, wrong channel order or normalisation, permuted priors) fails them.
DET_TEST_IMAGES = 300
DET_MIN_MAP = 0.80  # measured 0.8164 (VOC07 11-point, IoU 0.5)
CLS_SUBSET_EVERY = 5  # 120 of the 600 test images, 10 per class
CLS_SUBSET_MIN_TOP1 = 0.95  # measured 1.0000


@pytest.fixture(scope="module")
def evaluate_assets():
    spec = importlib.util.spec_from_file_location("evaluate_assets", REPO / "tools" / "evaluate_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sidecar(model: Path) -> dict:
    return json.loads(model.with_suffix(".json").read_text())


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("model_path", [DETECTOR, CLASSIFIER], ids=["detector", "classifier"])
def test_model_file_is_opset13_with_batchnorm_and_within_budget(model_path: Path) -> None:
    assert model_path.stat().st_size <= MODEL_BUDGET_BYTES
    raw = onnx.load(str(model_path))
    onnx.checker.check_model(raw)
    assert {o.domain: o.version for o in raw.opset_import}.get("", None) == 13
    ops = [n.op_type for n in raw.graph.node]
    assert ops.count("BatchNormalization") >= 5, "BN must stay separate so the harness's BN folding is exercised"
    model = load_model(model_path)
    assert [n.op_type for n in model.proto.graph.node].count("BatchNormalization") == ops.count("BatchNormalization")


def test_assets_within_budget() -> None:
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total <= ASSETS_BUDGET_BYTES, f"suites/assets holds {total / 1e6:.2f} MB"


def test_detector_io_matches_documented_layout(evaluate_assets) -> None:
    meta = _sidecar(DETECTOR)
    priors = evaluate_assets.detector_priors(meta)
    p = priors.shape[0]
    assert p == meta["num_priors"]
    model = load_model(DETECTOR)
    graph = model.proto.graph
    assert [i.name for i in graph.input] == ["input"]
    assert _dims(graph.input[0]) == [1, 3, 160, 160]
    assert [o.name for o in graph.output] == ["scores", "boxes"]
    sess = make_session(model.serialized(), threads=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(1, 3, 160, 160)).astype(np.float32)
    scores, boxes = sess.run(["scores", "boxes"], {"input": x})
    assert scores.shape == (1, p, 7) and boxes.shape == (1, p, 4)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)  # softmax over background + 6 classes


def test_classifier_io_matches_documented_layout() -> None:
    model = load_model(CLASSIFIER)
    graph = model.proto.graph
    assert [i.name for i in graph.input] == ["input"]
    assert _dims(graph.input[0]) == [1, 3, 64, 64]
    assert [o.name for o in graph.output] == ["logits"]
    sess = make_session(model.serialized(), threads=1)
    (logits,) = sess.run(["logits"], {"input": np.zeros((1, 3, 64, 64), np.float32)})
    assert logits.shape == (1, 12)


def test_evaluation_data_layout() -> None:
    voc = ASSETS / "synthvoc" / "VOCdevkit" / "VOC2007"
    classes = tuple(_sidecar(DETECTOR)["classes"])
    assert len(VOCDataset(voc, split="test", classes=classes)) == 300
    assert len(VOCDataset(voc, split="calib", classes=classes)) == 100
    cls_root = ASSETS / "synthcls" / "classification"
    test = ClassFolderDataset(cls_root / "test")
    assert len(test) == 600 and len(ClassFolderDataset(cls_root / "calib")) == 240
    assert list(test.class_names) == _sidecar(CLASSIFIER)["classes"]


def test_detector_fp32_map_on_test_split(evaluate_assets) -> None:
    res = evaluate_assets.evaluate_detector(DETECTOR, threads=2)
    assert res["n_images"] == DET_TEST_IMAGES
    assert res["map"] >= DET_MIN_MAP, f"fp32 mAP {res['map']:.4f} on {DET_TEST_IMAGES} images; AP {res['ap']}"


def test_classifier_fp32_top1_on_subset(evaluate_assets) -> None:
    res = evaluate_assets.evaluate_classifier(CLASSIFIER, every=CLS_SUBSET_EVERY, threads=2)
    assert res["n_images"] == 600 // CLS_SUBSET_EVERY
    assert res["top1"] >= CLS_SUBSET_MIN_TOP1, f"fp32 top-1 {res['top1']:.4f} on {res['n_images']} images"
