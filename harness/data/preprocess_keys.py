"""The toolchains' spellings of one normalisation, mapped onto ``mean`` / ``std`` (0..255 pixel units).

| spelling                | keys                               | formula                            | becomes              |
|-------------------------|------------------------------------|------------------------------------|----------------------|
| canonical / torchvision | ``mean``, ``std``                  | ``(x - mean) / std``               | as is                |
| ncnn                    | ``mean``, ``norm``                 | ``(x - mean) * norm``              | ``std = 1 / norm``   |
| NNIE (nnie_mapper cfg)  | ``mean_file``, ``data_scale``      | ``(x - mean) * data_scale``        | ``std = 1 / scale``  |
| TFLite uint8 input      | ``mean_values``, ``std_dev_values``| ``real = (q - mean) / std_dev``    | as is                |

NNIE's ``mean_file`` is, in nnie_mapper, a path to a text file with one value per line (one per channel).
We accept both that path (relative paths resolve against the suite's folder) and an inline list, because a
suite file should be self-contained. NNIE's ``RGB_order`` ("RGB" / "BGR") is accepted for
``channel_order``.

Two spellings of the same quantity (``std`` and ``norm``, ``mean`` and ``mean_file``, ...) are refused
rather than silently preferring one: when they disagree nobody can tell which the author meant.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

_CANONICAL = (
    "size",
    "channel_order",
    "resize",
    "short_side",
    "pad_value",
    "letterbox_align",
    "interpolation",
    "mean",
    "std",
    "layout",
    "dtype",
    "image_type",
)
_SPELLINGS = ("norm", "data_scale", "mean_file", "mean_values", "std_dev_values", "RGB_order")
VALID_KEYS: tuple[str, ...] = _CANONICAL + _SPELLINGS

# Each group holds the keys that spell one quantity; at most one key per group may be present.
_GROUPS: dict[str, tuple[str, ...]] = {
    "mean": ("mean", "mean_file", "mean_values"),
    "std": ("std", "norm", "data_scale", "std_dev_values"),
    "channel_order": ("channel_order", "RGB_order"),
}


def canonical_values(table: Mapping[str, Any], *, base_dir: Path | None) -> dict[str, Any]:
    """Keyword arguments for ``PreprocessSpec`` from a table that may use any spelling."""
    out = {k: v for k, v in table.items() if k in _CANONICAL}
    for quantity, keys in _GROUPS.items():
        present = [k for k in keys if k in table]
        if len(present) > 1:
            raise ConfigError(
                f"The preprocessing table spells {quantity} twice: {' and '.join(present)}",
                expected=f"exactly one of {', '.join(keys)}",
                remedy=f"keep one of {', '.join(present)} and delete the other",
            )
    if "mean_file" in table:
        out["mean"] = _mean_file(table["mean_file"], base_dir)
    if "mean_values" in table:
        out["mean"] = _numbers(table["mean_values"], "mean_values")
    if "norm" in table:
        out["std"] = _reciprocal(table["norm"], "norm")
    if "data_scale" in table:
        out["std"] = _reciprocal(table["data_scale"], "data_scale")
    if "std_dev_values" in table:
        out["std"] = _numbers(table["std_dev_values"], "std_dev_values")
    if "RGB_order" in table:
        order = str(table["RGB_order"]).lower()
        if order not in ("rgb", "bgr"):
            raise ConfigError(f"Got RGB_order = {table['RGB_order']!r}", expected="RGB or BGR")
        out["channel_order"] = order
    for key in ("mean", "std"):
        if key in out:
            out[key] = _numbers(out[key], key)
    return out


def _numbers(value: Any, key: str) -> tuple[float, ...]:
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        return tuple(float(v) for v in values if not isinstance(v, bool))
    except (TypeError, ValueError):
        raise ConfigError(f"Got {key} = {value!r}", expected="a number or a list of numbers, one per channel") from None


def _reciprocal(value: Any, key: str) -> tuple[float, ...]:
    numbers = _numbers(value, key)
    if any(v == 0.0 for v in numbers):
        raise ConfigError(f"Got {key} = {value!r}", expected=f"non-zero values ({key} multiplies the pixels)")
    return tuple(1.0 / v for v in numbers)


def _mean_file(value: Any, base_dir: Path | None) -> tuple[float, ...]:
    if not isinstance(value, (str, Path)):
        return _numbers(value, "mean_file")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"Cannot read mean_file {path}: {exc.strerror or exc}",
            expected="a text file with one mean value per line, one line per channel",
            remedy="fix the path (relative paths are resolved against the suite file's folder) or give a list",
        ) from None
    values = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ConfigError(f"mean_file {path} holds a non-number", expected="one number per line") from None
