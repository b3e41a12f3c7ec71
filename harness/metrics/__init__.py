"""Task metrics for fp32 and int8 on the same images: VOC AP, COCO (pycocotools), classification.

Every metric streams (``update`` per image or batch, ``compute``, ``merge``, ``reset``) and can
hand out per-image statistics whose ``value_on(weights)`` recomputes the headline number on a
resample, which is what :func:`paired_bootstrap` needs.
"""

from harness.metrics.bootstrap import BootstrapResult, paired_bootstrap, weighted_mean
from harness.metrics.classification import (
    ClassificationMetric,
    ClassificationResult,
    ClassificationStats,
    Top1Agreement,
)
from harness.metrics.coco import STAT_NAMES as COCO_STAT_NAMES
from harness.metrics.coco import CocoDetectionMetric, evaluate_coco, evaluate_coco_files
from harness.metrics.voc import VocAP, VocResult
from harness.metrics.voc_stats import VocStats

__all__ = [
    "BootstrapResult", "paired_bootstrap", "weighted_mean",
    "ClassificationMetric", "ClassificationResult", "ClassificationStats", "Top1Agreement",
    "COCO_STAT_NAMES", "CocoDetectionMetric", "evaluate_coco", "evaluate_coco_files",
    "VocAP", "VocResult", "VocStats",
]
