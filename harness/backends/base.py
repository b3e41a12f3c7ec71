"""What every backend provides: build the toolchain's artefact from the harness's plan, run it, name its tensors.

A backend is a real toolchain (or the harness's own simulation) that computes the quantised model.
The harness holds it against the fp32 model and against the simulation, tensor by tensor, so the
contract is deliberately small:

* :meth:`Backend.prepare` takes the fp32 ONNX model **after BatchNorm folding** (the plan's weights
  are keyed by the folded initializers, and the compared tensors are the folded graph's), the
  :class:`~harness.quant.plan.QuantPlan` (``None``: the toolchain's fp32 path) and the profile, and
  writes whatever the toolchain needs into ``work_dir``.
* :meth:`Backend.run` maps ONNX input names to arrays and returns float32 arrays keyed by ONNX
  tensor names: the graph outputs and every intermediate tensor the backend can map (dequantised,
  in the ONNX shape). :attr:`Backend.tensor_map` says which tensors those are and which are not.
* :meth:`Backend.available` returns None when the toolchain can run here, else the reason (tests
  and suites skip with it).

Backends register themselves by name (:mod:`harness.backends`); options are keyword-only
constructor arguments, so a suite table can hold them.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx

from harness.errors import HarnessError
from harness.quant.plan import QuantPlan
from harness.quant.profiles import Profile


class BackendError(HarnessError):
    """A toolchain is missing, refused the model, or failed while building or running it."""


@dataclass(frozen=True)
class TensorMap:
    """How a backend's tensors line up with the ONNX model's.

    ``names``: ONNX tensor -> the backend's name for it. ``unmapped``: ONNX tensors (in topological
    order) the backend has no value for (fused away, renamed beyond recognition, or laid out
    differently). ``requantized``: ONNX tensors the backend holds only as int8 codes made for one
    consumer (ncnn's fused requantisation), tensor -> that consumer's node name; their values are
    the dequantised codes, so compare them with what that consumer reads in the simulation.
    """

    names: Mapping[str, str]
    unmapped: tuple[str, ...] = ()
    requantized: Mapping[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """One toolchain. Subclasses set ``name`` and register with :func:`harness.backends.register_backend`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @classmethod
    @abc.abstractmethod
    def available(cls) -> str | None:
        """None when usable on this machine, else why not (e.g. "the ncnn wheel is not installed")."""

    @abc.abstractmethod
    def prepare(self, model: onnx.ModelProto, plan: QuantPlan | None, profile: Profile | None, *,
                work_dir: Path) -> None:
        """Build the artefact for ``model`` (BN-folded) quantised as ``plan`` (None: fp32) in ``work_dir``."""

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass: ONNX input name -> array; returns ONNX tensor name -> float32 array."""

    @property
    @abc.abstractmethod
    def tensor_map(self) -> TensorMap:
        """The mapping of the prepared artefact (valid after :meth:`prepare`)."""

    def require_available(self) -> None:
        reason = self.available()
        if reason is not None:
            raise BackendError(f"Backend {self.name!r} is not available: {reason}",
                               expected="its toolchain installed", remedy="pip install -e '.[test]', or pick "
                               "another backend")


def require_prepared(value: object, backend: str) -> None:
    """Guard for methods that need :meth:`Backend.prepare` first (a programming error, kept readable)."""
    if value is None:
        raise BackendError(f"Backend {backend!r} was run before it was prepared", expected="prepare() first",
                           remedy="call prepare(model, plan, profile, work_dir=...) before run()")
