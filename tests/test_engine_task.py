"""Engine-level task helpers: which classes a classification summary lists."""

from __future__ import annotations

import numpy as np

from harness.engine.task import MAX_LISTED_CLASSES, reported_classes


def test_few_classes_are_all_listed() -> None:
    c = np.zeros((MAX_LISTED_CLASSES, MAX_LISTED_CLASSES), dtype=np.int64)
    assert reported_classes(c, c) is None


def test_many_classes_list_only_those_seen_as_label_or_prediction_on_either_side() -> None:
    n = 1000
    fp32, quant = np.zeros((n, n), dtype=np.int64), np.zeros((n, n), dtype=np.int64)
    fp32[285, 285] = 1          # label 285, fp32 predicted it
    quant[285, 281] = 1         # int8 predicted 281 for it
    fp32[540, 540] = quant[540, 682] = 1
    assert reported_classes(fp32, quant).tolist() == [281, 285, 540, 682]
