"""The per-suite layer table as CSV, for spreadsheets and diffing two runs outside the harness.

Columns follow docs/results.md (LayerRow) in that order, so a CSV from any run lines up with any other;
keys a newer producer adds are appended after them rather than dropped. Rows stay in topological order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

#: LayerRow keys in documented order.
LAYER_COLUMNS: tuple[str, ...] = (
    "index", "name", "node_name", "op_type",
    "acc_cosine", "acc_euclid_similarity", "acc_sqnr_db", "acc_mae", "acc_max_abs_error",
    "local_cosine", "local_euclid_similarity", "local_sqnr_db", "local_mae", "local_max_abs_error",
    "cosine_min", "euclid_min", "sqnr_db_min", "passed",
)


def layers_frame(layers: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A DataFrame with one row per layer (possibly none) and the documented columns first."""
    extra: list[str] = []
    for row in layers:
        extra.extend(k for k in row if k not in LAYER_COLUMNS and k not in extra)
    columns = [*LAYER_COLUMNS, *extra]
    return pd.DataFrame([{k: row.get(k) for k in columns} for row in layers], columns=columns)


def layers_csv_text(layers: Sequence[Mapping[str, Any]]) -> str:
    """The CSV text (header always present, so an empty table still round-trips with its columns)."""
    return layers_frame(layers).to_csv(index=False, lineterminator="\n")
