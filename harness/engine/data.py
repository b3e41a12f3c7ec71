"""The images a suite runs on: evaluation samples, calibration images and probe images.

Built once per suite from ``[data]``, eagerly (the datasets check every file up front), in a fixed order:
probe images are the first ``probe_images`` evaluation samples, so the golden dumps name images a person can
open. Models are fed one image at a time (batch 1), because deployed detectors and most exported ONNX files
have a fixed batch of 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import (
    ClassFolderDataset, ClassListDataset, COCODataset, Dataset, ImageListDataset, ImageMeta, Sample,
    VOCDataset, preprocess,
)
from harness.data.preprocess import PreprocessSpec
from harness.errors import ConfigError
from harness.suite import Suite


@dataclass(frozen=True)
class SuiteData:
    """Evaluation samples (capped by ``max_images``), calibration images and the probe samples."""

    evaluation: tuple[Sample[Any], ...]
    calibration: tuple[Path, ...]
    class_names: tuple[str, ...]
    spec: PreprocessSpec
    probe_count: int
    skipped: tuple[str, ...] = ()
    coco_category_ids: tuple[int, ...] = ()

    @property
    def probes(self) -> tuple[Sample[Any], ...]:
        return self.evaluation[: self.probe_count]

    def inputs(self, samples: Sequence[Sample[Any]]) -> Iterator[tuple[np.ndarray, ImageMeta]]:
        """Each sample preprocessed to a batch-of-one model input, with its geometry."""
        for sample in samples:
            x, meta = preprocess(sample.read(), self.spec)
            yield x[None], meta

    def calibration_batches(self) -> Iterator[np.ndarray]:
        """Calibration inputs (batch of one each), for :func:`harness.quant.quantize_model` passes."""
        from harness.data import read_image

        for path in self.calibration:
            x, _ = preprocess(read_image(path), self.spec)
            yield x[None]


def load_suite_data(suite: Suite) -> SuiteData:
    """Open the datasets ``[data]`` names; every problem is a :class:`~harness.errors.DataError` naming the file."""
    cfg = suite.data
    dataset = _evaluation_dataset(suite)
    samples = tuple(dataset.samples)
    if cfg.max_images is not None:
        samples = samples[: cfg.max_images]
    if not samples:
        raise ConfigError(f"Suite {suite.name!r} has no evaluation images", expected="at least one image",
                          remedy=f"check [data] root / split in {suite.path}")
    calibration: tuple[Path, ...] = ()
    if cfg.calibration is not None:
        calibration = tuple(ImageListDataset(cfg.calibration, recursive=True, skip_bad=cfg.skip_bad).image_paths)
    elif cfg.calibration_split is not None:
        calibration = tuple(VOCDataset(cfg.root, split=cfg.calibration_split, classes=dataset.class_names or None,
                                       skip_bad=cfg.skip_bad, ignore_unknown_classes=True).image_paths)
    if cfg.calibration_max_images is not None:
        calibration = calibration[: cfg.calibration_max_images]
    probe_count = min(cfg.probe_images, len(samples))
    return SuiteData(evaluation=samples, calibration=calibration, class_names=tuple(dataset.class_names),
                     spec=suite.preprocess, probe_count=probe_count, skipped=tuple(dataset.skipped),
                     coco_category_ids=tuple(getattr(dataset, "category_ids", ())))


def _evaluation_dataset(suite: Suite) -> Dataset[Any]:
    cfg = suite.data
    if cfg.format == "voc":
        return VOCDataset(cfg.root, split=cfg.split, classes=cfg.classes, skip_bad=cfg.skip_bad)
    if cfg.format == "coco":
        return COCODataset(cfg.annotations, cfg.root, skip_bad=cfg.skip_bad)
    if cfg.format == "classification_folder":
        return ClassFolderDataset(cfg.root, classes=cfg.classes)
    if cfg.format == "classification_list":
        return ClassListDataset(cfg.list, root=cfg.root, classes=cfg.classes, skip_bad=cfg.skip_bad)
    if cfg.format == "images":
        return ImageListDataset(cfg.root, skip_bad=cfg.skip_bad)
    raise ConfigError(f"Unknown [data] format {cfg.format!r}", expected="voc, coco, classification_folder, "
                      "classification_list or images")
