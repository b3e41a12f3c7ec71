"""Post-processing: SSD priors + decode, NMS, classification, UltraFace."""

from harness.tasks.classification import argmax, softmax, top_k
from harness.tasks.nms import Detections, batched_multiclass_nms, iou_matrix, multiclass_nms, nms
from harness.tasks.ssd import (
    PriorBoxLayer,
    center_to_corner,
    corner_to_center,
    decode_boxes,
    encode_boxes,
    num_priors,
    prior_boxes,
)
from harness.tasks.ultraface import decode_ultraface, ultraface_detect, ultraface_priors

__all__ = [
    "Detections",
    "PriorBoxLayer",
    "argmax",
    "batched_multiclass_nms",
    "center_to_corner",
    "corner_to_center",
    "decode_boxes",
    "decode_ultraface",
    "encode_boxes",
    "iou_matrix",
    "multiclass_nms",
    "nms",
    "num_priors",
    "prior_boxes",
    "softmax",
    "top_k",
    "ultraface_detect",
    "ultraface_priors",
]
