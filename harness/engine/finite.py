"""The ``finite`` check: no NaN or Inf anywhere the harness looks.

Every comparison statistic skips non-finite element pairs (``compare/stats.py`` counts them in
``nonfinite_count``) and the task adapters drop NaN scores at the score threshold, so a model whose outputs
are half NaN still scores a mAP and compares "within bounds" on the finite half. Nothing else fails on it:
this check does, and names where the values start.

What is scanned, per image: the fp32 tensors of the probe images (every compared layer, BN-folded, and the
outputs of the model as given), the quantized simulation's tensors and its int8-kernel outputs on the same
images, and the fp32 and quantized outputs on every evaluation image (counted while the evaluation runs, see
``SuiteStages.evaluation``). The verdict names the first tensor in topological order, fp32 before quantized
(a NaN the fp32 model already makes is not quantization's fault), its node and op type, and the first image,
with counts. ``[suite] allow_nonfinite = true`` turns the failure into a passing verdict that still says all of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.compare.stats import count_nonfinite
from harness.engine.results import CheckResult
from harness.errors import HarnessError, NumericError
from harness.gates import Verdict

if TYPE_CHECKING:  # stages imports this module for the counter
    from harness.engine.stages import SuiteStages

__all__ = ["NonfiniteCounter", "NonfiniteRow", "blame_nonfinite_outputs", "finite"]

#: Scan order of the sides: what the fp32 model does comes first.
SIDES: tuple[str, ...] = ("fp32", "quantized", "int8-kernels")
IMAGE_SETS: tuple[str, ...] = ("probe", "evaluation")


@dataclass
class NonfiniteRow:
    """Non-finite counts of one tensor on one side (fp32, quantized, int8-kernels) over one image set."""

    side: str
    image_set: str  # "probe" | "evaluation"
    tensor: str
    elements: int = 0
    nan: int = 0
    inf: int = 0
    images: int = 0  # images seen
    images_bad: int = 0  # images with at least one NaN/Inf
    first_image: str | None = None
    first_coords: tuple[int, ...] | None = None  # in that image's tensor

    @property
    def count(self) -> int:
        return self.nan + self.inf

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "image_set": self.image_set, "tensor": self.tensor, "nan": self.nan,
                "inf": self.inf, "elements": self.elements, "images": self.images, "images_bad": self.images_bad,
                "first_image": self.first_image,
                "first_coords": list(self.first_coords) if self.first_coords is not None else None}


class NonfiniteCounter:
    """Streaming NaN/Inf counts per (side, image set, tensor); memory grows with the number of tensors only."""

    def __init__(self) -> None:
        self.rows_: dict[tuple[str, str, str], NonfiniteRow] = {}
        self.images_: dict[tuple[str, str], set[str]] = {}  # (side, image set) -> images seen
        self.bad_images_: dict[tuple[str, str], set[str]] = {}  # ... with at least one NaN/Inf

    def update(self, side: str, image_set: str, image: str, values: dict[str, np.ndarray]) -> NonfiniteCounter:
        """Count ``values`` (tensor name -> that image's array) of one image."""
        self.images_.setdefault((side, image_set), set()).add(image)
        for name, value in values.items():
            a = np.asarray(value)
            row = self.rows_.setdefault((side, image_set, name), NonfiniteRow(side, image_set, name))
            row.elements += a.size
            row.images += 1
            found = count_nonfinite(a)
            if found.first is None:
                continue
            row.nan += found.nan
            row.inf += found.inf
            row.images_bad += 1
            self.bad_images_.setdefault((side, image_set), set()).add(image)
            if row.first_image is None:
                row.first_image, row.first_coords = image, found.first
        return self

    def merge(self, other: NonfiniteCounter) -> NonfiniteCounter:
        for key, row in other.rows_.items():
            mine = self.rows_.setdefault(key, NonfiniteRow(row.side, row.image_set, row.tensor))
            if mine.first_image is None:
                mine.first_image, mine.first_coords = row.first_image, row.first_coords
            for attr in ("elements", "nan", "inf", "images", "images_bad"):
                setattr(mine, attr, getattr(mine, attr) + getattr(row, attr))
        for mine_sets, theirs in ((self.images_, other.images_), (self.bad_images_, other.bad_images_)):
            for key, images in theirs.items():
                mine_sets.setdefault(key, set()).update(images)
        return self

    def bad_rows(self, order: dict[str, int]) -> list[NonfiniteRow]:
        """Rows with NaN/Inf: fp32 first, then by topological position (``order``), probe before evaluation."""
        rows = [r for r in self.rows_.values() if r.count]
        return sorted(rows, key=lambda r: (SIDES.index(r.side), order.get(r.tensor, len(order)),
                                           IMAGE_SETS.index(r.image_set)))

    def totals(self) -> str:
        """``NaN/Inf in fp32 3 tensors on 2 of 2 probe images and 1 tensor on 300 of 300 evaluation images; ...``"""
        parts = []
        for side in SIDES:
            sets = []
            for image_set in IMAGE_SETS:
                n = sum(1 for r in self.rows_.values() if r.side == side and r.image_set == image_set and r.count)
                if n:
                    bad, seen = self.bad_images_[(side, image_set)], self.images_[(side, image_set)]
                    sets.append(f"{n} tensor{'s' * (n > 1)} on {len(bad)} of {len(seen)} {image_set} images")
            if sets:
                parts.append(f"{side} " + " and ".join(sets))
        return "NaN/Inf in " + "; ".join(parts)

@contextlib.contextmanager
def blame_nonfinite_outputs(image: str, **sides: dict[str, np.ndarray]) -> Iterator[None]:
    """Around a task adapter's update of evaluation ``image``: when the adapter refuses it (a HarnessError) and
    the model outputs of that image (``fp32=..., quantized=...``) hold NaN/Inf, raise that as the reason instead
    of the adapter's complaint about decoded boxes."""
    try:
        yield
    except HarnessError as exc:
        for side, values in sides.items():
            for name, value in values.items():
                n_bad = count_nonfinite(value).total
                if n_bad:
                    raise NumericError(f"The {side} output {name!r} holds {n_bad} NaN/Inf values on evaluation "
                                       f"image {image!r}, so its task metrics are undefined ({exc.what})",
                                       expected="finite model outputs",
                                       remedy="the suite's finite check names the first tensor that holds NaN/Inf "
                                              "on the probe images; fix the model or its input there") from exc
        raise


def finite(stages: SuiteStages) -> CheckResult:
    counter = NonfiniteCounter()
    probe = stages.probe
    ids = [str(s.image_id) for s in stages.data.probes]
    for i, image in enumerate(ids):
        counter.update("fp32", "probe", image, {n: v[i] for n, v in probe.layers.items()})
        counter.update("fp32", "probe", image, {n: v[i] for n, v in probe.outputs.items() if n not in probe.layers})
    stopped = None
    try:  # a quantized model or an evaluation that cannot run is this item's error only when fp32 is finite
        run = stages.quant_probe
        counter.merge(run.nonfinite)
        for i, image in enumerate(ids):
            counter.update("int8-kernels", "probe", image, {n: v[i] for n, v in run.kernel_outputs.items()})
        if stages.task is not None:
            counter.merge(stages.evaluation.nonfinite)
    except HarnessError as exc:
        stopped = exc
    order = {t.name: t.index for t in stages.layers}
    rows = counter.bad_rows(order)
    if stopped is not None and not rows:
        return CheckResult("finite", error=stopped)
    n_eval = len(stages.data.evaluation) if stages.task is not None else 0
    verdict = _verdict(stages, counter, rows, n_probe=len(ids), n_eval=n_eval, stopped=stopped)
    return CheckResult("finite", [verdict], sections={"nonfinite": [r.to_dict() for r in rows]})


def _verdict(stages: SuiteStages, counter: NonfiniteCounter, rows: list[NonfiniteRow], *, n_probe: int, n_eval: int,
             stopped: HarnessError | None) -> Verdict:
    allowed = stages.suite.allow_nonfinite
    source = (f"{stages.suite.path.name} [suite] allow_nonfinite = true" if allowed
              else "harness: NaN/Inf make every comparison and metric undefined")
    total = float(sum(r.count for r in rows))
    common = dict(check="finite", gate="nonfinite_count", observed=total, bound=0.0, op="<=", source=source,
                  least_passing=None)
    where = f"{n_probe} probe image{'s' * (n_probe != 1)}" + (
        f" and the outputs on {n_eval} evaluation image{'s' * (n_eval != 1)}" if n_eval else "")
    if not rows:
        return Verdict(passed=True, message=f"finite passed: no NaN/Inf in the fp32 or quantized tensors on {where}",
                       remedy="nothing to do", subject=None, details={"n_tensors": 0}, **common)
    first = rows[0]
    info = next((t for t in stages.layers if t.name == first.tensor), None)
    node = f"{info.node_name} ({info.op_type}) -> tensor {first.tensor!r}" if info else f"tensor {first.tensor!r}"
    kind = "output" if first.tensor in stages.probe.outputs else "layer"
    text = (f"first {first.side} {kind} {node} holds {first.nan} NaN and {first.inf} Inf of {first.elements} values "
            f"over {first.images} {first.image_set} images (first on {first.image_set} image {first.first_image!r} "
            f"at {list(first.first_coords or ())}); {counter.totals()}")
    if stopped is not None:
        text += f"; the rest was not scanned: {stopped.what}"
    details = {"n_tensors": len(rows), "first_side": first.side, "first_image": first.first_image}
    if allowed:
        return Verdict(passed=True, message=f"finite passed with a note ([suite] allow_nonfinite = true): {text}",
                       remedy="nothing to do (the suite allows NaN/Inf)", subject=first.tensor, details=details,
                       **common)
    name = info.node_name if info else first.tensor
    if first.side == "fp32":
        remedy = (f"the fp32 model itself makes them at {name}, so quantization is not the cause: check that node's "
                  "weights (a NaN/Inf initializer), its arithmetic (division by zero, log or sqrt of a negative) and "
                  "the preprocessing; if the model is meant to produce them, set [suite] allow_nonfinite = true")
    else:
        remedy = (f"fp32 is finite there, so the {first.side} run makes them from {name} on: look at that layer's "
                  "scales in the calibration (a zero or NaN scale), or keep it in float with "
                  f"[quant] float_layers = [\"{name}\"]")
    return Verdict(passed=False, message=f"finite FAILED: {text}", remedy=remedy, subject=first.tensor,
                   details=details, **common)

