"""A quantisation plan: which tensors are quantised, how, and with which parameters.

The plan is the hand-off between the parts of the core that *decide* (profiles, calibration,
calibration tables) and the part that *executes* (``simulate.py`` writes the QDQ model). Keeping it
a plain data structure means a table read from disk, a fresh calibration and a suite override all
reach the simulator the same way, so "reading a table and simulating uses exactly those scales"
holds by construction.

Activation sites are edges, not tensors: ncnn quantises a blob where a Conv reads it, while the
same blob stays float where an Add or Concat reads it. ``(tensor, "*")`` means the tensor is
quantised once after its producer and every consumer reads the quantised value (tpu-mlir, TFLite,
onnxruntime); ``(tensor, consumer)`` means only that consumer reads a quantised copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from harness.quant.scheme import QuantScheme

if TYPE_CHECKING:
    from harness.quant.lowering import LoweredOp

ALL_CONSUMERS = "*"


@dataclass(frozen=True)
class TensorQuant:
    """Scheme and parameters of one quantised tensor (``scale``/``zero_point`` as ``quant_params``).

    For the log2 domain ``zero_point`` holds the NNIE offset ``z`` and ``scale`` the smallest level.
    """

    scheme: QuantScheme
    scale: np.ndarray
    zero_point: np.ndarray

    @property
    def step(self) -> np.ndarray:
        """The quantisation step in real units (uniform: the scale)."""
        return np.asarray(self.scale, dtype=np.float32)


@dataclass(frozen=True)
class QuantPlan:
    """Everything ``write_qdq_model`` needs.

    ``weights`` is keyed by initializer name. ``activations`` by ``(tensor, consumer)`` where the
    consumer is a node's display name (``harness.model.node_display_name``) or ``ALL_CONSUMERS``.
    ``quantize_bias``: store biases of quantised Conv/Gemm as int32 with scale
    ``s_input * s_weight`` (onnxruntime, TFLite); ncnn keeps them float.
    ``float_layers``: nodes the user kept in float (recorded for reports and tables).
    ``lowered``: nodes the target computes in integers its own way (Sophon: :mod:`harness.quant.lowering`),
    by node display name; the QDQ writer emits their integer arithmetic instead of the float op, and
    their weights are in the record, not in ``weights``.
    """

    weights: Mapping[str, TensorQuant] = field(default_factory=dict)
    activations: Mapping[tuple[str, str], TensorQuant] = field(default_factory=dict)
    quantize_bias: bool = False
    float_layers: frozenset[str] = frozenset()
    lowered: Mapping[str, "LoweredOp"] = field(default_factory=dict)

    def activation_for(self, tensor: str, consumer: str) -> TensorQuant | None:
        """The quantisation a given consumer reads for ``tensor`` (edge entry first, then ``*``)."""
        return self.activations.get((tensor, consumer)) or self.activations.get((tensor, ALL_CONSUMERS))
