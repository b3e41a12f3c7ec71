"""The golden store ``golden/<suite>/``: an atomic writer and a verifying reader.

Writing (``GoldenWriter``) goes into a hidden temp directory next to the target
(``golden/.<suite>.tmp-<id>``); tensors are streamed into the ``.dat`` files and hashed on the
fly; ``commit`` fsyncs every file, writes the manifest last, and then swaps directories by
renaming. A crash or an exception before the swap leaves the old golden untouched (the temp
directory is removed on exception; one left by a killed process is ignored by readers). The swap
is two renames (old -> ``.<suite>.old-<id>``, temp -> target): a crash exactly between them
leaves no ``golden/<suite>`` but a complete ``.old`` copy, which ``GoldenStore.open`` points to.

An existing golden is never replaced unless ``overwrite=True`` (the CLI's ``--golden-update`` /
``--force``): goldens are the reference, silently rewriting one hides the regression it caught.

Tensors holding NaN/Inf are refused (``NumericError``) unless ``allow_nonfinite=True`` (the suite's
``[suite] allow_nonfinite``): NaN equals nothing, so such a golden could never confirm a run, and every
comparison against it would quietly skip those elements. A refusal aborts the write: the temp directory is
removed and an existing golden stays as it was.

Reading (``GoldenStore.open``) checks every file's size against the manifest at once, and every
tensor's sha256 either at once (small goldens, the default under 64 MiB) or when it is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from harness.compare.stats import count_nonfinite
from harness.errors import GoldenCorruptError, GoldenError, GoldenMissingError, NumericError
from harness.golden.dat import DatFileWriter, file_sha256, read_exact
from harness.golden.manifest import (
    MANIFEST_NAME,
    SECTION_FILES,
    FileEntry,
    Manifest,
    TensorEntry,
    current_versions,
)

__all__ = ["EAGER_VERIFY_BYTES", "GoldenStore", "GoldenWriter"]

log = logging.getLogger(__name__)
EAGER_VERIFY_BYTES = 64 << 20
_SECTION_WORD = {"input": "input", "output": "output", "layers": "layer"}
_REGENERATE = "regenerate it with --golden-update (or restore it from version control)"


class GoldenWriter:
    """Streams one golden into a temp directory and commits it atomically.

    Use as a context manager (commit on success, abort on exception) or call ``commit``/``abort``.
    Probe images are stacked per tensor on axis 0 (see ``harness.golden.manifest``): pass each
    tensor once, with all images, in input / output / topological order.
    """

    def __init__(self, target: str | os.PathLike[str], *, model_sha256: str | None,
                 preprocessing: dict[str, Any] | None = None, num_images: int = 1, overwrite: bool = False,
                 extra: dict[str, Any] | None = None, allow_nonfinite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.allow_nonfinite = allow_nonfinite
        self._refuse_existing()
        self.model_sha256 = model_sha256
        self.preprocessing = dict(preprocessing or {})
        self.num_images = num_images
        self.extra = dict(extra or {})
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self._dat: dict[str, DatFileWriter] = {}
        self._files: list[FileEntry] = []
        self._names: set[tuple[str, str]] = set()
        self.committed = False
        for section in ("input", "output"):  # Sophon tools expect both files, even if empty
            self._writer(section)

    def _refuse_existing(self) -> None:
        if self.target.exists() and not self.overwrite:
            raise GoldenError(f"A golden already exists at {self.target}",
                              expected="an explicit request to replace it",
                              remedy="pass --golden-update (overwrite=True) to rewrite it, then re-run to confirm")

    def _writer(self, section: str) -> DatFileWriter:
        if section not in SECTION_FILES:
            raise ValueError(f"unknown section {section!r}; expected one of {list(SECTION_FILES)}")
        if section not in self._dat:
            self._dat[section] = DatFileWriter(self.tmp / SECTION_FILES[section], section=section)
        return self._dat[section]

    def _claim(self, section: str, name: str) -> None:
        if (section, name) in self._names:
            raise ValueError(f"tensor {name!r} written twice to section {section!r}")
        self._names.add((section, name))

    def write(self, section: str, name: str, array: np.ndarray) -> TensorEntry:
        """Append one tensor (all probe images, ``[N, ...]``) to ``section``'s ``.dat`` file."""
        self._claim(section, name)
        if not self.allow_nonfinite:
            self._refuse_nonfinite(section, name, np.asarray(array))
        return self._writer(section).write_tensor(name, array)

    def _refuse_nonfinite(self, section: str, name: str, array: np.ndarray) -> None:
        found = count_nonfinite(array)
        if found.first is None:
            return
        first = found.first
        ids = self.extra.get("probe_images") or []
        image = f", probe image {ids[first[0]]!r}" if first and first[0] < len(ids) else ""
        if array.dtype == np.float16 and found.inf:
            image += "; float16 dumps hold at most 65504, larger values become Inf"
        raise self._refusal(
            f"{_SECTION_WORD.get(section, section)} tensor {name!r} holds {found.total} NaN/Inf values of "
            f"{array.size} ({found.nan} NaN, {found.inf} Inf; the first at {list(first)}{image})",
            expected="finite tensors: NaN equals nothing, so this golden could never confirm a run",
            remedy="find where they start (the suite's finite check names the first layer and image) and fix the "
                   "model or its input; if the model is meant to produce them, set [suite] allow_nonfinite = true")

    def _refusal(self, what: str, *, expected: str, remedy: str) -> NumericError:
        """Abort (nothing of this write stays on disk) and return the error to raise."""
        self.abort()
        state = "the golden there is unchanged" if self.target.exists() else "nothing was written"
        return NumericError(f"Refused to write the golden {self.target}: {what}; {state}", expected=expected,
                            remedy=remedy)

    def write_input(self, name: str, array: np.ndarray) -> TensorEntry:
        return self.write("input", name, array)

    def write_output(self, name: str, array: np.ndarray) -> TensorEntry:
        return self.write("output", name, array)

    def write_layer(self, name: str, array: np.ndarray) -> TensorEntry:
        return self.write("layers", name, array)

    def write_raw(self, section: str, name: str, *, dtype: np.dtype | str, shape: tuple[int, ...],
                  chunks: Iterable[bytes]) -> TensorEntry:
        """Append a tensor given as little-endian byte chunks (importing dumps without decoding)."""
        self._claim(section, name)
        return self._writer(section).write_chunks(name, dtype=dtype, shape=shape, chunks=chunks)

    def add_file(self, name: str, data: bytes | str) -> FileEntry:
        """Store a side file (``metrics.json``, a calibration table) with its checksum."""
        if "/" in name or name in (MANIFEST_NAME, *SECTION_FILES.values()):
            raise ValueError(f"reserved or nested file name {name!r}")
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        path = self.tmp / name
        with open(path, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        entry = FileEntry(name=name, nbytes=len(payload), sha256=file_sha256(path))
        self._files = [f for f in self._files if f.name != name] + [entry]
        return entry

    def add_json(self, name: str, obj: Any) -> FileEntry:
        try:
            text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
        except ValueError as exc:
            if "out of range float" not in str(exc).lower():  # NaN/Inf: strict JSON has no spelling for them
                raise
            raise self._refusal(f"{name} holds a NaN or Inf number", expected="finite numbers (JSON has no NaN)",
                                remedy="the values are undefined: fix the model, calibration or metric that "
                                       "produced them (the suite's finite check names NaN/Inf tensors)") from None
        return self.add_file(name, text + "\n")

    def commit(self) -> Manifest:
        self._refuse_existing()  # someone may have written it meanwhile
        files = [w.close() for w in self._dat.values()] + self._files
        tensors = tuple(e for section in SECTION_FILES if section in self._dat for e in self._dat[section].entries)
        manifest = Manifest(model_sha256=self.model_sha256, preprocessing=self.preprocessing, tensors=tensors,
                            files=tuple(files), num_images=self.num_images, versions=current_versions(),
                            extra=self.extra, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with open(self.tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
            fh.write(manifest.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(self.tmp)
        self._swap()
        self.committed = True
        return manifest

    def _swap(self) -> None:
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
            try:
                os.rename(self.tmp, self.target)
            except BaseException:
                os.rename(old, self.target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.target)
        _fsync_dir(self.target.parent)

    def abort(self) -> None:
        for w in self._dat.values():
            w.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> GoldenWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class GoldenStore:
    """A verified, read-only view of one golden directory. Use ``GoldenStore.open``."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest
        self._verified: set[str] = set()
        self._read: set[str] = set()

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, verify: Literal["auto", "eager", "lazy"] = "auto") -> GoldenStore:
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            leftovers = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.is_dir() else []
            remedy = (f"a previous update was interrupted; rename {leftovers[0]} back to {root}" if leftovers and not root.exists()
                      else "create it with --golden-update, or `quant-harness golden import` for existing dumps")
            raise GoldenMissingError(f"No golden at {root} ({MANIFEST_NAME} not found)",
                                     expected=f"a directory with {MANIFEST_NAME}", remedy=remedy)
        store = cls(root, Manifest.read(manifest_path))
        store._check_sizes()
        total = sum(f.nbytes for f in store.manifest.files)
        if verify == "eager" or (verify == "auto" and total <= EAGER_VERIFY_BYTES):
            store.verify_all()
        return store

    def _check_sizes(self) -> None:
        for f in self.manifest.files:
            path = self.root / f.name
            if not path.is_file():
                raise GoldenCorruptError(f"Golden file {path} is missing (listed in {MANIFEST_NAME})",
                                         expected=f"{f.nbytes} bytes", remedy=_REGENERATE)
            size = path.stat().st_size
            if size == f.nbytes:
                continue
            short = [t for t in self.manifest.tensors if t.file == f.name and t.offset + t.nbytes > size]
            where = f"; first affected tensor {short[0].name!r}" if short else "; extra bytes after the last tensor"
            raise GoldenCorruptError(f"Golden file {path} has {size} bytes, the manifest says {f.nbytes}{where}",
                                     expected="the file exactly as written (truncated or appended to?)",
                                     remedy=_REGENERATE)

    def verify_all(self) -> None:
        """Check every tensor's and every side file's sha256 now."""
        for t in self.manifest.tensors:
            self._tensor_bytes(t)
        dat_files = set(SECTION_FILES.values())
        for f in self.manifest.files:
            if f.name not in dat_files:
                self.read_file(f.name)

    def _tensor_bytes(self, t: TensorEntry) -> bytearray:
        path = self.root / t.file
        data = read_exact(path, t.offset, t.nbytes)
        if len(data) != t.nbytes:
            raise GoldenCorruptError(f"Golden file {path} ends inside tensor {t.name!r}",
                                     expected=f"{t.nbytes} bytes at offset {t.offset}", remedy=_REGENERATE)
        if t.key not in self._verified:
            if hashlib.sha256(data).hexdigest() != t.sha256:
                raise GoldenCorruptError(f"Tensor {t.name!r} in golden file {path} does not match its sha256 "
                                         f"(bytes {t.offset}..{t.offset + t.nbytes} were edited)",
                                         expected="the bytes recorded in manifest.json", remedy=_REGENERATE)
            self._verified.add(t.key)
        return data

    def entries(self, section: str | None = None) -> list[TensorEntry]:
        return [t for t in self.manifest.tensors if section is None or t.section == section]

    def names(self, section: str | None = None) -> list[str]:
        return [t.name for t in self.entries(section)]

    def entry(self, name: str, *, section: str | None = None) -> TensorEntry:
        """Lookup order without a section: input, output, layers (the same tensor may be in two)."""
        for sec in ([section] if section else list(SECTION_FILES)):
            for t in self.manifest.tensors:
                if t.section == sec and t.name == name:
                    return t
        raise GoldenMissingError(f"Tensor {name!r} is not in the golden at {self.root}"
                                 + (f" (section {section!r})" if section else ""),
                                 expected=f"one of {self.names(section)[:8]}{' ...' if len(self.names(section)) > 8 else ''}",
                                 remedy="regenerate the golden with --golden-update if the model changed")

    def read_tensor(self, name: str, *, section: str | None = None) -> np.ndarray:
        """The tensor as a writable numpy array (verified against its sha256; no pickle anywhere)."""
        t = self.entry(name, section=section)
        data = self._tensor_bytes(t)
        self._read.add(t.key)
        return np.frombuffer(data, dtype=t.np_dtype).reshape(t.shape)

    def unused_tensors(self) -> list[TensorEntry]:
        """Tensors stored but never read (syrupy's "unused snapshots"): stale layers to prune."""
        return [t for t in self.manifest.tensors if t.key not in self._read]

    def read_file(self, name: str) -> bytes:
        """A side file's bytes, checked against the manifest."""
        f = self.manifest.file_entry(name)
        if f is None:
            raise GoldenMissingError(f"File {name!r} is not in the golden at {self.root}",
                                     expected=f"one of {[x.name for x in self.manifest.files]}",
                                     remedy="regenerate the golden with --golden-update")
        data = (self.root / name).read_bytes()
        if len(data) != f.nbytes or hashlib.sha256(data).hexdigest() != f.sha256:
            raise GoldenCorruptError(f"Golden file {self.root / name} does not match its sha256",
                                     expected="the bytes recorded in manifest.json", remedy=_REGENERATE)
        return data

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_file(name).decode("utf-8"))
