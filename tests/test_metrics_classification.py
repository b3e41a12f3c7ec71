"""Classification metrics vs hand-computed values; streaming == one pass."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import DataError
from harness.metrics.classification import ClassificationMetric, Top1Agreement

LOGITS = np.array([
    [0.1, 0.7, 0.2, 0.0],  # label 1: top-1 hit
    [0.5, 0.1, 0.3, 0.1],  # label 2: rank 1 (top-2 hit)
    [0.1, 0.2, 0.3, 0.4],  # label 0: rank 3
    [0.3, 0.3, 0.1, 0.0],  # label 1: tie with class 0, lower index wins -> rank 1
    [0.0, 0.0, 0.9, 0.1],  # label 2: hit
])
LABELS = np.array([1, 2, 0, 1, 2])


def test_hand_computed():
    m = ClassificationMetric(num_classes=4, topk=(1, 2, 3))
    m.update(LOGITS, LABELS)
    r = m.compute()
    assert r.topk == {1: 2 / 5, 2: 4 / 5, 3: 4 / 5}
    assert r.top1 == 0.4
    # per class: class 0: 0/1, class 1: 1/2, class 2: 1/2, class 3: no samples
    np.testing.assert_allclose(r.per_class_accuracy, [0, 0.5, 0.5, np.nan])
    assert r.mean_class_accuracy == pytest.approx(1 / 3)
    expected = np.zeros((4, 4), int)
    for true, pred in [(1, 1), (2, 0), (0, 3), (1, 0), (2, 2)]:
        expected[true, pred] += 1
    np.testing.assert_array_equal(r.confusion, expected)
    assert r.n_samples == 5


def test_streaming_equals_single_pass_and_merge():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(100, 10)), rng.integers(0, 10, 100)
    one = ClassificationMetric(num_classes=10)
    one.update(logits, labels)
    a, b = ClassificationMetric(num_classes=10), ClassificationMetric(num_classes=10)
    a.update(logits[:30], labels[:30])
    a.update(logits[30:60], labels[30:60])
    b.update(logits[60:], labels[60:])
    ra, r1 = a.merge(b).compute(), one.compute()
    assert ra.topk == r1.topk
    np.testing.assert_array_equal(ra.confusion, r1.confusion)
    # top-5 against an argsort formulation
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    assert r1.topk[5] == np.mean([labels[i] in top5[i] for i in range(100)])
    assert one.stats().value_on(np.ones(100)) == r1.top1


def test_agreement():
    m = Top1Agreement()
    fp32 = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    m.update(fp32, np.array([[0.9, 0.1], [0.6, 0.4], [2.0, 1.5]]))
    assert m.compute() == pytest.approx(2 / 3)
    np.testing.assert_array_equal(m.per_sample, [True, False, True])
    with pytest.raises(DataError):
        m.update(fp32, fp32[:2])


def test_bad_input():
    m = ClassificationMetric(num_classes=4)
    with pytest.raises(DataError):
        m.update(LOGITS, LABELS[:3])
    with pytest.raises(DataError):
        m.update(LOGITS, LABELS + 3)
    with pytest.raises(DataError):
        m.update(LOGITS[:, :3], LABELS)
