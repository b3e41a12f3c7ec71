"""Read VOC detection results files (``comp4_det_<split>_<class>.txt``) into arrays.

The devkit's format: one file per class, one detection per line, ``image_id score x1 y1 x2 y2``,
boxes in VOC 1-based inclusive pixel coordinates (the same convention as the annotations, so no
conversion happens here). Anything else on a line is an error naming the file and the line:
a silently skipped line would silently lower AP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError


@dataclass(frozen=True, eq=False)
class ClassResults:
    """Detections of one class in file order; ``lines`` are 1-based line numbers (for messages)."""

    path: Path
    image_ids: tuple[str, ...]
    scores: np.ndarray  # [N]
    boxes: np.ndarray  # [N, 4] x1 y1 x2 y2
    lines: np.ndarray  # [N]


def find_results_files(results_dir: str | Path, *, split: str, prefix: str = "comp4_det") -> dict[str, Path]:
    """Class name -> results file, for every ``<prefix>_<split>_<class>.txt`` in ``results_dir``."""
    root = Path(results_dir)
    if not root.is_dir():
        raise DataError(f"Results folder {root} does not exist",
                        expected=f"a folder holding {prefix}_{split}_<class>.txt files")
    head = f"{prefix}_{split}_"
    return {p.name[len(head):-len(".txt")]: p for p in sorted(root.glob(f"{head}*.txt"))}


def read_class_results(path: str | Path) -> ClassResults:
    """Parse one results file; a malformed line raises DataError naming file and line."""
    path = Path(path)
    ids: list[str] = []
    rows: list[list[float]] = []
    lines: list[int] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 text file", expected="VOC results text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue  # blank lines (e.g. a trailing newline pair) carry no detection
        values = _parse_fields(fields, path, number)
        ids.append(fields[0])
        rows.append(values)
        lines.append(number)
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return ClassResults(path=path, image_ids=tuple(ids), scores=arr[:, 0], boxes=arr[:, 1:],
                        lines=np.asarray(lines, dtype=np.int64))


def _parse_fields(fields: list[str], path: Path, number: int) -> list[float]:
    expected = "'image_id score x1 y1 x2 y2' (6 fields, finite numbers, x1 <= x2, y1 <= y2)"
    where = f"{path} line {number}"
    if len(fields) != 6:
        raise DataError(f"{where} has {len(fields)} fields: {' '.join(fields)!r}", expected=expected,
                        remedy="rewrite the results file in the devkit format")
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError:
        raise DataError(f"{where} has a non-numeric field: {' '.join(fields)!r}", expected=expected) from None
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{where} has a NaN or infinite value: {' '.join(fields)!r}", expected=expected,
                        remedy="check the detector output for NaN scores or boxes")
    _, x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        raise DataError(f"{where} has an inverted box: {' '.join(fields)!r}", expected=expected)
    return values
