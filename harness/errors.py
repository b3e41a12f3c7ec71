"""User-facing errors.

Every error a user can cause (a bad file, a bad config, bad data) is a ``HarnessError`` whose
message says three things, in the order a person needs them: what happened ("Got X"), what was
expected ("Expected Y"), and what to do ("Try Z"). Internal bugs stay ordinary exceptions.

The subclasses exist so callers (the CLI, the pytest plugin) can decide how to present a failure
and so tests can assert the exact kind of refusal; they carry no extra behaviour.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error caused by user input.

    Parameters are keyword-only after ``what`` so a message is never assembled by position:
    ``HarnessError("model.onnx is empty", expected="an ONNX protobuf", remedy="re-export it")``.
    """

    def __init__(self, what: str, *, expected: str | None = None, remedy: str | None = None) -> None:
        self.what = what
        self.expected = expected
        self.remedy = remedy
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [_sentence(self.what)]
        if self.expected:
            parts.append(_sentence(f"Expected {self.expected}"))
        if self.remedy:
            parts.append(_sentence(f"Try: {self.remedy}"))
        return " ".join(parts)

    def __str__(self) -> str:
        return self.message


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


# --- models -------------------------------------------------------------------------------------
class ModelError(HarnessError):
    """The model file cannot be used."""


class ModelNotFoundError(ModelError):
    """The path does not exist or is not a file."""


class ModelFormatError(ModelError):
    """The file exists but is not a readable ONNX model (empty, truncated, LFS pointer, HTML...)."""


class ModelExternalDataError(ModelError):
    """The model refers to an external-data file that is missing or too short."""


class ModelRuntimeError(ModelError):
    """onnxruntime refused to build or run a session for the model."""


# --- configuration ------------------------------------------------------------------------------
class ConfigError(HarnessError):
    """A suite file, preprocessing table, profile override or CLI argument is invalid."""


# --- data ---------------------------------------------------------------------------------------
class DataError(HarnessError):
    """A dataset, image, annotation or results file is unusable."""


class ImageReadError(DataError):
    """An image is missing or cannot be decoded."""


class AnnotationError(DataError):
    """An annotation (VOC XML, COCO json, list file) is malformed or inconsistent with its image."""


# --- numerics -----------------------------------------------------------------------------------
class NumericError(HarnessError):
    """Activations or weights hold values that make a result undefined (NaN, Inf)."""


class CalibrationError(HarnessError):
    """Calibration cannot produce a range (no data seen, incompatible merge, bad table)."""


class TableError(HarnessError):
    """A calibration table (ncnn .table, tpu-mlir calibration table or qtable) is malformed."""


# --- golden data --------------------------------------------------------------------------------
class GoldenError(HarnessError):
    """Golden files are missing, truncated, edited or of an unknown format version."""


class GoldenMissingError(GoldenError):
    """No golden exists yet for this suite."""


class GoldenCorruptError(GoldenError):
    """A golden file does not match its manifest (size or checksum)."""


# --- model conversion ---------------------------------------------------------------------------
class ModelConversionError(ModelFormatError):
    """A model in another framework's format (a Caffe prototxt/caffemodel) parses, but uses a layer,
    option or weight layout the importer cannot convert to ONNX with the same meaning."""
