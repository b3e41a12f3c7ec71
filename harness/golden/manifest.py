"""``manifest.json``: what a golden directory holds and how to check it.

The Sophon ``.dat`` files have no header, so everything needed to read them (names, dtypes,
shapes, offsets) and to trust them (byte lengths, sha256) lives here. The manifest also records
the model's sha256, the preprocessing, when it was written (``created``, UTC; absent in goldens
written before it was recorded) and the versions of harness / onnxruntime / numpy that wrote it,
so a changed golden can be traced to its cause.

``format_version`` starts at 1 (syrupy style). A reader refuses a version it does not know
instead of guessing; newer goldens need a newer harness, older unknown ones need regenerating.

Layout of several probe images (tensor-major, Sophon-consistent): ``input_ref_data.dat`` holds
the model input as the model sees it, with the batch on axis 0, so N probe images are stored per
tensor as one ``[N, ...]`` block; tensors follow each other in input (output, topological) order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import GoldenCorruptError, GoldenError

__all__ = ["FORMAT_VERSION", "LAYOUT", "MANIFEST_NAME", "SECTION_FILES", "FileEntry", "Manifest", "TensorEntry",
           "current_versions"]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: section -> file name (the first two are the Sophon ``cmp=True`` names)
SECTION_FILES = {"input": "input_ref_data.dat", "output": "output_ref_data.dat", "layers": "layers.dat"}
LAYOUT = ("raw little-endian tensors, no header, concatenated per file in input/output/topological order; "
          "probe images stacked per tensor on axis 0 ([N, ...])")


@dataclass(frozen=True)
class TensorEntry:
    section: str
    file: str
    name: str
    dtype: str  # numpy dtype name; bytes are little-endian whatever the host
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    sha256: str

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def key(self) -> str:
        return f"{self.file}:{self.name}"


@dataclass(frozen=True)
class FileEntry:
    name: str
    nbytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    model_sha256: str | None
    preprocessing: dict[str, Any]
    tensors: tuple[TensorEntry, ...]
    files: tuple[FileEntry, ...]
    num_images: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    layout: str = LAYOUT
    created: str | None = None  # ISO 8601 UTC; None: written before the date was recorded

    def to_json(self) -> str:
        data = asdict(self)
        data["tensors"] = [{**asdict(t), "shape": list(t.shape)} for t in self.tensors]
        order = ["format_version", "created", "model_sha256", "num_images", "layout", "preprocessing", "versions",
                 "files", "tensors", "extra"]
        if self.created is None:  # an old golden read and written back keeps its shape
            order.remove("created")
        return json.dumps({k: data[k] for k in order}, indent=1, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: Path | str = MANIFEST_NAME) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GoldenCorruptError(f"{source} is not valid JSON ({exc})", expected="a manifest written by quant-harness",
                                     remedy="restore it from version control or regenerate with --golden-update") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise GoldenError(
                f"{source} has format_version {version!r}",
                expected=f"format_version {FORMAT_VERSION}",
                remedy=("upgrade quant-harness (the golden was written by a newer version)" if newer else
                        "regenerate the golden with --golden-update (or `quant-harness golden import` for dumps)"),
            )
        try:
            tensors = tuple(TensorEntry(**{**t, "shape": tuple(int(d) for d in t["shape"])}) for t in data["tensors"])
            files = tuple(FileEntry(**f) for f in data["files"])
            return cls(model_sha256=data.get("model_sha256"), preprocessing=dict(data.get("preprocessing") or {}),
                       tensors=tensors, files=files, num_images=int(data.get("num_images", 1)),
                       versions=dict(data.get("versions") or {}), extra=dict(data.get("extra") or {}),
                       format_version=version, layout=data.get("layout", LAYOUT), created=data.get("created"))
        except (KeyError, TypeError, ValueError) as exc:
            raise GoldenCorruptError(f"{source} is missing or mistypes a field ({exc!r})",
                                     expected="a manifest written by quant-harness",
                                     remedy="restore it from version control or regenerate with --golden-update") from None

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.from_json(path.read_text(encoding="utf-8"), source=path)

    def file_entry(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.name == name), None)


def current_versions() -> dict[str, str]:
    """Versions of the writing software; onnxruntime is optional for pure readers."""
    from harness import __version__

    versions = {"harness": __version__, "numpy": np.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - it is a dependency, but reading goldens must not need it
        versions["onnxruntime"] = "not installed"
    return versions
