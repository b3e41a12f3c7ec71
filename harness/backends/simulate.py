"""The harness's own simulation as a backend: the QDQ model in ``simulate`` mode (see harness.quant.simulate).

It is the fast default and the column every real toolchain is held against, so it answers in the
same terms: ONNX tensor names, float32 values. :meth:`SimulateBackend.edge_value` also gives what a
given consumer reads after quantisation, which is what a toolchain that keeps int8 codes between
layers (ncnn's fused requantisation) must be compared with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx

from harness.backends import register_backend
from harness.backends.base import Backend, TensorMap, require_prepared
from harness.model.graph import tensor_list
from harness.quant.calibration import write_qdq
from harness.quant.plan import ALL_CONSUMERS, QuantPlan
from harness.quant.profiles import Profile
from harness.quant.simulate import QdqModel, mode_runner


@register_backend
class SimulateBackend(Backend):
    name: ClassVar[str] = "simulate"
    description: ClassVar[str] = "the harness's QDQ simulation (onnxruntime, graph optimisations off)"

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = threads
        self.qdq: QdqModel | None = None
        self._runner = None
        self._map: TensorMap | None = None
        self._edges: dict[tuple[str, str], str] = {}

    @classmethod
    def available(cls) -> str | None:
        return None

    def prepare(self, model: onnx.ModelProto, plan: QuantPlan | None, profile: Profile | None, *,
                work_dir: Path | None = None) -> None:
        names = [t.name for t in tensor_list(model)]
        qdq = write_qdq(model, plan if plan is not None else QuantPlan())
        self.qdq = qdq
        self._edges = dict(qdq.edge_dequantized)
        extra = sorted(set(self._edges.values()) | set(qdq.dequantized_tensors.values()))
        self._runner = mode_runner(qdq, "simulate", taps=names + extra, threads=self.threads)
        self._map = TensorMap(names={n: n for n in names})

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_prepared(self._runner, self.name)
        return self._runner.run(dict(inputs))

    def edge_value(self, values: Mapping[str, np.ndarray], tensor: str, consumer: str) -> np.ndarray | None:
        """What ``consumer`` reads of ``tensor`` after quantisation, from a :meth:`run` result (None: float)."""
        name = self._edges.get((tensor, consumer)) or self._edges.get((tensor, ALL_CONSUMERS))
        return None if name is None else values.get(name)

    @property
    def tensor_map(self) -> TensorMap:
        require_prepared(self._map, self.name)
        return self._map
