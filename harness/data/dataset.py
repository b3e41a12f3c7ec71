"""What every dataset yields, and the shared policy for bad samples.

Datasets are small immutable lists of :class:`Sample` built eagerly at construction: annotation files are
parsed and image files checked for existence once, up front, so that (a) the order is fixed before anything
runs (calibration and evaluation must see the same images in the same order on every machine) and (b) a
broken dataset fails in the first second, naming the file, instead of after an hour of calibration. Image
*decoding* happens later, in :meth:`Sample.read`, because decoded images do not fit in memory.

``skip_bad=True`` turns each per-sample error into a logged warning, counted in ``num_skipped`` (with the
messages in ``skipped``), and drops that sample. Errors about the dataset as a whole (a missing annotation
file, a missing split list) are always raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from harness.data.images import read_image
from harness.errors import DataError

T = TypeVar("T")
R = TypeVar("R")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class BoxAnnotation:
    """Ground-truth boxes of one image.

    ``boxes`` is [G, 4] float64 (x1, y1, x2, y2) in the convention named by ``box_convention`` (``"voc"``: 1-based
    inclusive, as in the XML; ``"xyxy"``: continuous 0-based, COCO), see :mod:`harness.data.boxes`.
    ``labels`` [G] int64 index into the dataset's ``class_names``. ``difficult`` [G] bool: VOC ``difficult``
    (neither a true nor a false positive). ``truncated`` [G] bool. ``crowd`` [G] bool: COCO ``iscrowd``.
    ``image_size`` is (width, height) as stated by the annotation.
    """

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray
    crowd: np.ndarray
    image_size: tuple[int, int]
    box_convention: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def build(
        cls,
        *,
        boxes: Sequence[Sequence[float]],
        labels: Sequence[int],
        image_size: tuple[int, int],
        box_convention: str,
        difficult: Sequence[bool] | None = None,
        truncated: Sequence[bool] | None = None,
        crowd: Sequence[bool] | None = None,
    ) -> BoxAnnotation:
        n = len(labels)

        def flags(values: Sequence[bool] | None) -> np.ndarray:
            return np.zeros(n, dtype=bool) if values is None else np.asarray(values, dtype=bool).reshape(n)

        return cls(
            boxes=np.asarray(boxes, dtype=np.float64).reshape(n, 4),
            labels=np.asarray(labels, dtype=np.int64).reshape(n),
            difficult=flags(difficult),
            truncated=flags(truncated),
            crowd=flags(crowd),
            image_size=(int(image_size[0]), int(image_size[1])),
            box_convention=box_convention,
        )


@dataclass(frozen=True)
class Sample(Generic[T]):
    """One dataset item: where the image is, a stable id, and its target.

    ``target`` is a :class:`BoxAnnotation` (VOC, COCO), an ``int`` class index (classification) or ``None``
    (calibration image lists).
    """

    image_path: Path
    image_id: str
    target: T

    def read(self) -> np.ndarray:
        """Decode the image (uint8 BGR [H, W, 3]) with :func:`harness.data.images.read_image`."""
        return read_image(self.image_path)


class Dataset(Generic[T]):
    """An ordered, immutable sequence of samples plus the bad-sample bookkeeping.

    Subclasses parse their source in ``__init__`` and hand the result to :meth:`_set_samples`.
    """

    samples: tuple[Sample[T], ...] = ()
    class_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.samples = ()
        self.class_names = ()
        self.skipped: list[str] = []

    @property
    def num_skipped(self) -> int:
        """How many samples ``skip_bad=True`` dropped (the messages are in ``skipped``)."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample[T]]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample[T]:
        return self.samples[index]

    @property
    def image_paths(self) -> list[Path]:
        return [s.image_path for s in self.samples]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_skipped} skipped)"


def collect(
    items: Sequence[R],
    build: Callable[[R], Sample[T] | None],
    *,
    skip_bad: bool,
    skipped: list[str],
    kind: str,
) -> tuple[Sample[T], ...]:
    """Apply ``build`` to every item in order; under ``skip_bad`` log, count and drop the ones that raise
    a :class:`DataError` (``build`` may also return ``None`` to drop an item deliberately)."""
    samples: list[Sample[T]] = []
    for item in items:
        try:
            sample = build(item)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            _log.warning("%s: skipping a bad sample (%d so far): %s", kind, len(skipped), exc)
            continue
        if sample is not None:
            samples.append(sample)
    if skipped:
        _log.warning("%s: skipped %d bad sample(s) of %d", kind, len(skipped), len(items))
    return tuple(samples)
