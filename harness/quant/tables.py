"""Calibration tables of other toolchains: ncnn ``.table`` and tpu-mlir calibration table / qtable.

Users bring these files from ncnn2table or tpu-mlir's run_calibration and expect the harness to
simulate exactly those scales, so reading is strict (a malformed line is a TableError naming file,
line and field, never a silently skipped layer) and writing is exact (floats are formatted so that
reading them back gives the same float32 / float64 value) and atomic (a crash never leaves half a
table that a later run would trust).

ncnn ``.table``
    Weight lines ``<layer>_param_0 s0 s1 ...`` (one multiplicative scale per output channel,
    ``s = 127 / absmax``; dead channels are 0), then activation lines ``<layer> s`` (the scale of
    the layer's input blob, ``s = 127 / threshold``). A key containing ``_param_`` is a weight line.
    ``#`` directly followed by a key (``#conv1_param_0 ...`` / ``#conv1 ...`` / ``#conv1``) keeps
    that layer in fp32; its scales, if present, are still read. ``#`` followed by a space (or
    nothing) is a free comment. Scales are float32, written with 9 significant digits.

tpu-mlir calibration table
    ``#`` comment lines, then rows ``name threshold min max``; symmetric int8 means
    ``x = q * threshold / 127``. A ``#int4_th`` line starts the optional int4 section, whose rows
    have the same layout. Values are Python floats written with ``repr`` (shortest exact).

tpu-mlir qtable
    Rows ``name MODE`` with MODE in F32, F16, BF16, INT8; ``#`` lines are comments.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import NumericError, TableError

QTABLE_MODES = ("F32", "F16", "BF16", "INT8")
_DEAD_ABSMAX = float(np.finfo(np.float32).tiny)


# --- conversions ----------------------------------------------------------------------------------
def ncnn_scales_from_absmax(absmax: np.ndarray | float, *, bits: int = 8) -> np.ndarray:
    """ncnn multiplicative scales ``qmax / absmax`` (qmax 127, or 31 for ncnn's 6-bit weights).

    A dead channel (absmax below the smallest normal float32) gets 0, as ncnn writes it: every
    value of that channel then quantises to 0.
    """
    if bits not in (8, 6):
        raise ValueError(f"ncnn tables hold 8-bit or 6-bit weight scales, got bits={bits}")
    qmax = 127.0 if bits == 8 else 31.0
    a = np.abs(np.asarray(absmax, dtype=np.float64))
    if not np.all(np.isfinite(a)):
        raise NumericError("Got NaN or Inf in a weight or activation range", expected="finite ranges",
                           remedy="check the model weights and calibration data")
    dead = a < _DEAD_ABSMAX
    return np.where(dead, 0.0, qmax / np.where(dead, 1.0, a)).astype(np.float32)


def onnx_scale_from_ncnn(scale: np.ndarray | float) -> np.ndarray:
    """ONNX scale (``x = q * s``) from an ncnn scale (``q = x * s``): ``1 / s``.

    ncnn's 0 (dead channel) becomes the unit scale 1.0, which is also what ``quant_params`` gives a
    zero range: zeros stay exactly zero and no scale is infinite.
    """
    s = np.asarray(scale, dtype=np.float64)
    return np.where(s == 0, 1.0, 1.0 / np.where(s == 0, 1.0, s)).astype(np.float32)


def ncnn_scale_from_onnx(scale: np.ndarray | float) -> np.ndarray:
    """ncnn scale from an ONNX scale: ``1 / s`` (a float32 reciprocal, so not always an exact round trip)."""
    s = np.asarray(scale, dtype=np.float64)
    if np.any(s <= 0):
        raise NumericError("Got a non-positive ONNX scale", expected="scales > 0", remedy="check the QDQ model")
    return (1.0 / s).astype(np.float32)


def threshold_from_ncnn(scale: np.ndarray | float, *, qmax: int = 127) -> np.ndarray:
    """Clip threshold ``qmax / s``; a dead (0) scale means threshold 0."""
    s = np.asarray(scale, dtype=np.float64)
    return np.where(s == 0, 0.0, qmax / np.where(s == 0, 1.0, s))


def ncnn_scale_from_threshold(threshold: np.ndarray | float, *, qmax: int = 127) -> np.ndarray:
    """ncnn activation scale ``qmax / threshold`` (0 for a zero threshold)."""
    return ncnn_scales_from_absmax(threshold, bits=8 if qmax == 127 else 6)


def onnx_scale_from_threshold(threshold: np.ndarray | float, *, qmax: int = 127) -> np.ndarray:
    """Symmetric ONNX scale ``threshold / qmax`` (tpu-mlir: ``x = q * threshold / 127``)."""
    return (np.asarray(threshold, dtype=np.float64) / qmax).astype(np.float32)


def threshold_from_onnx_scale(scale: np.ndarray | float, *, qmax: int = 127) -> np.ndarray:
    return np.asarray(scale, dtype=np.float64) * qmax


# --- atomic text writing --------------------------------------------------------------------------
def _write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temp file next to ``path`` and ``os.replace`` it over: readers see the old
    file or the new one, never a prefix. The temp file is removed on any failure."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def _f32(x: float) -> str:
    return format(np.float32(x), ".9g")


def _bad(path: Path, lineno: int, what: str, *, expected: str, remedy: str) -> TableError:
    return TableError(f"{path}:{lineno}: {what}", expected=expected, remedy=remedy)


def _parse_float(path: Path, lineno: int, text: str, field_name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(path, lineno, f"bad {field_name} {text!r}", expected="a decimal number",
                   remedy="fix or regenerate the table") from None
    if not np.isfinite(value):
        raise _bad(path, lineno, f"non-finite {field_name} {text!r}", expected="a finite number",
                   remedy="recalibrate this layer")
    return value


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TableError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                         expected="a text calibration table", remedy="check the file path") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


# --- ncnn -----------------------------------------------------------------------------------------
@dataclass(eq=False)
class NcnnTable:
    """An ncnn int8 table. Dict order is file order (the caller passes topological order)."""

    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    activation_scales: dict[str, float] = field(default_factory=dict)
    float_layers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # normalise to what the file can hold, so a written-and-read table compares equal
        self.weight_scales = {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in self.weight_scales.items()}
        self.activation_scales = {k: float(np.float32(v)) for k, v in self.activation_scales.items()}
        self.float_layers = frozenset(self.float_layers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NcnnTable):
            return NotImplemented
        return (list(self.weight_scales) == list(other.weight_scales)
                and all(np.array_equal(np.asarray(self.weight_scales[k], np.float32),
                                       np.asarray(other.weight_scales[k], np.float32)) for k in self.weight_scales)
                and list(self.activation_scales.items()) == list(other.activation_scales.items())
                and frozenset(self.float_layers) == frozenset(other.float_layers))


def _check_scales(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise NumericError(f"Got a NaN, Inf or negative ncnn scale for {name!r}",
                           expected="finite scales >= 0 (0 marks a dead channel)", remedy="recalibrate this layer")


def format_ncnn_table(table: NcnnTable) -> str:
    lines: list[str] = []
    floats = frozenset(table.float_layers)
    for layer, scales in table.weight_scales.items():
        s = np.asarray(scales, dtype=np.float32).reshape(-1)
        _check_scales(layer, s)
        mark = "#" if layer in floats else ""
        lines.append(f"{mark}{layer}_param_0 " + " ".join(_f32(v) for v in s))
    for layer, scale in table.activation_scales.items():
        _check_scales(layer, np.asarray([scale], dtype=np.float64))
        mark = "#" if layer in floats else ""
        lines.append(f"{mark}{layer} {_f32(scale)}")
    listed = set(table.weight_scales) | set(table.activation_scales)
    # sorted, not set order: set iteration order changes with PYTHONHASHSEED
    lines.extend(f"#{layer}" for layer in sorted(floats - listed))
    return "".join(line + "\n" for line in lines)


def write_ncnn_table(table: NcnnTable, path: str | os.PathLike[str]) -> Path:
    return _write_atomic(path, format_ncnn_table(table))


def read_ncnn_table(path: str | os.PathLike[str]) -> NcnnTable:
    p = Path(path)
    weights: dict[str, np.ndarray] = {}
    acts: dict[str, float] = {}
    floats: set[str] = set()
    base_remedy = "fix the line, or regenerate the table with ncnn2table"
    for n, line in _lines(p):
        disabled = line.startswith("#")
        remedy = base_remedy
        if disabled:
            if len(line) == 1 or line[1].isspace():
                continue  # free comment
            line = line[1:]
            remedy = base_remedy + "; a free comment needs a space after '#'"
        key, *values = line.split()
        if "_param_" in key:
            layer, _, index = key.rpartition("_param_")
            if index != "0" or not layer:
                raise _bad(p, n, f"bad weight key {key!r}", expected="<layer>_param_0",
                           remedy=remedy)
            if layer in weights:
                raise _bad(p, n, f"duplicate weight line for {layer!r}", expected="one line per layer", remedy=remedy)
            if disabled:
                floats.add(layer)
                if not values:
                    continue
            if not values:
                raise _bad(p, n, f"weight line {key!r} has no scales", expected="one scale per output channel",
                           remedy=remedy)
            parsed = [_parse_float(p, n, v, f"weight scale #{i} of {key!r}") for i, v in enumerate(values)]
            if any(v < 0 for v in parsed):
                raise _bad(p, n, f"negative weight scale in {key!r}", expected="scales >= 0", remedy=remedy)
            weights[layer] = np.asarray(parsed, dtype=np.float32)
        else:
            if disabled:
                floats.add(key)
                if not values:
                    continue
            if len(values) != 1:
                raise _bad(p, n, f"activation line {key!r} has {len(values)} values",
                           expected="'<layer> <scale>' (a key with _param_ for weights)", remedy=remedy)
            if key in acts:
                raise _bad(p, n, f"duplicate activation line for {key!r}", expected="one line per layer", remedy=remedy)
            value = _parse_float(p, n, values[0], f"activation scale of {key!r}")
            if value < 0:
                raise _bad(p, n, f"negative activation scale {values[0]!r}", expected="a scale >= 0", remedy=remedy)
            acts[key] = float(np.float32(value))
    return NcnnTable(weight_scales=weights, activation_scales=acts, float_layers=frozenset(floats))


# --- tpu-mlir -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TpuCalibrationRow:
    threshold: float
    min: float
    max: float


@dataclass
class TpuCalibrationTable:
    """tpu-mlir calibration table: rows in file order, comments without their leading ``#``."""

    rows: dict[str, TpuCalibrationRow] = field(default_factory=dict)
    int4_rows: dict[str, TpuCalibrationRow] = field(default_factory=dict)
    comments: tuple[str, ...] = ()


def _row_text(name: str, row: TpuCalibrationRow) -> str:
    values = (row.threshold, row.min, row.max)
    if not all(np.isfinite(v) for v in values):
        raise NumericError(f"Got NaN or Inf in the calibration row of {name!r}", expected="finite values",
                           remedy="recalibrate this tensor")
    return f"{name} " + " ".join(repr(float(v)) for v in values)


def format_tpu_calibration_table(table: TpuCalibrationTable) -> str:
    lines = [f"# {c}" if c else "#" for c in table.comments]
    lines += [_row_text(name, row) for name, row in table.rows.items()]
    if table.int4_rows:
        lines.append("#int4_th")
        lines += [_row_text(name, row) for name, row in table.int4_rows.items()]
    return "".join(line + "\n" for line in lines)


def write_tpu_calibration_table(table: TpuCalibrationTable, path: str | os.PathLike[str]) -> Path:
    return _write_atomic(path, format_tpu_calibration_table(table))


def read_tpu_calibration_table(path: str | os.PathLike[str]) -> TpuCalibrationTable:
    p = Path(path)
    rows: dict[str, TpuCalibrationRow] = {}
    int4: dict[str, TpuCalibrationRow] = {}
    comments: list[str] = []
    current = rows
    for n, line in _lines(p):
        if line.startswith("#"):
            if line.split()[0] == "#int4_th":
                current = int4
            else:
                body = line[1:]
                comments.append(body[1:] if body.startswith(" ") else body)
            continue
        fields = line.split()
        if len(fields) != 4:
            raise _bad(p, n, f"row has {len(fields)} fields", expected="'name threshold min max' (4 fields)",
                       remedy="fix the row or regenerate the table with run_calibration")
        name = fields[0]
        th, lo, hi = (_parse_float(p, n, v, f"{label} of {name!r}")
                      for v, label in zip(fields[1:], ("threshold", "min", "max")))
        if name in current:
            raise _bad(p, n, f"duplicate row for {name!r}", expected="one row per tensor", remedy="remove one")
        current[name] = TpuCalibrationRow(threshold=th, min=lo, max=hi)
    return TpuCalibrationTable(rows=rows, int4_rows=int4, comments=tuple(comments))


def format_qtable(modes: dict[str, str]) -> str:
    lines = ["# quantization table written by quant-harness", "# op_name quantize_mode"]
    for name, mode in modes.items():
        if mode not in QTABLE_MODES:
            raise TableError(f"Got qtable mode {mode!r} for {name!r}", expected=f"one of {', '.join(QTABLE_MODES)}",
                             remedy="use one of those modes")
        lines.append(f"{name} {mode}")
    return "".join(line + "\n" for line in lines)


def write_qtable(modes: dict[str, str], path: str | os.PathLike[str]) -> Path:
    return _write_atomic(path, format_qtable(modes))


def read_qtable(path: str | os.PathLike[str]) -> dict[str, str]:
    p = Path(path)
    modes: dict[str, str] = {}
    for n, line in _lines(p):
        if line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise _bad(p, n, f"row has {len(fields)} fields", expected="'name MODE' (2 fields)",
                       remedy="fix the row")
        name, mode = fields
        if mode not in QTABLE_MODES:
            raise _bad(p, n, f"bad mode {mode!r} for {name!r}", expected=f"one of {', '.join(QTABLE_MODES)}",
                       remedy="use one of those modes")
        if name in modes:
            raise _bad(p, n, f"duplicate row for {name!r}", expected="one row per op", remedy="remove one")
        modes[name] = mode
    return modes
