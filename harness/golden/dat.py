"""Raw ``.dat`` files in the Sophon ``cmp`` layout: little-endian tensors back to back, no header.

Writing streams: each tensor is appended as soon as it is known and hashed on the fly, so a
golden of every layer never sits in memory at once. Reading never unpickles anything: bytes at
an offset become an array through ``np.frombuffer`` with the dtype from the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from harness.golden.manifest import FileEntry, TensorEntry

__all__ = ["DatFileWriter", "copy_stream", "file_sha256", "read_exact", "to_little_endian_bytes"]

_CHUNK = 1 << 20


def to_little_endian_bytes(array: np.ndarray) -> tuple[np.dtype, memoryview]:
    """C-contiguous little-endian bytes of ``array`` (a view when it already is)."""
    arr = np.asarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return dtype, memoryview(arr).cast("B")


class DatFileWriter:
    """Appends tensors to one ``.dat`` file, recording a ``TensorEntry`` for each."""

    def __init__(self, path: Path, *, section: str) -> None:
        self.path = Path(path)
        self.section = section
        self._fh: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file_hash = hashlib.sha256()
        self.offset = 0
        self.entries: list[TensorEntry] = []

    def write_tensor(self, name: str, array: np.ndarray) -> TensorEntry:
        dtype, data = to_little_endian_bytes(array)
        return self.write_chunks(name, dtype=dtype, shape=tuple(np.shape(array)), chunks=[data])

    def write_chunks(self, name: str, *, dtype: np.dtype | str, shape: tuple[int, ...],
                     chunks: Iterable[bytes | memoryview]) -> TensorEntry:
        """Append one tensor given as byte chunks (already little-endian); checks the total length."""
        dtype = np.dtype(dtype)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        tensor_hash = hashlib.sha256()
        written = 0
        for chunk in chunks:
            self._fh.write(chunk)
            tensor_hash.update(chunk)
            self._file_hash.update(chunk)
            written += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
        if written != expected:
            raise ValueError(f"tensor {name!r}: wrote {written} bytes, shape {shape} {dtype.name} needs {expected}")
        entry = TensorEntry(section=self.section, file=self.path.name, name=name, dtype=dtype.name,
                            shape=tuple(int(d) for d in shape), offset=self.offset, nbytes=written,
                            sha256=tensor_hash.hexdigest())
        self.offset += written
        self.entries.append(entry)
        return entry

    def close(self) -> FileEntry:
        """Flush and fsync (the commit renames the directory only after every byte is on disk)."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        return FileEntry(name=self.path.name, nbytes=self.offset, sha256=self._file_hash.hexdigest())

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def copy_stream(src: BinaryIO, nbytes: int) -> Iterable[bytes]:
    """Yield exactly ``nbytes`` from ``src`` in chunks (stops early if the source is short)."""
    left = nbytes
    while left > 0:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def read_exact(path: Path, offset: int, nbytes: int) -> bytearray:
    """``nbytes`` at ``offset``; shorter when the file is truncated (the caller reports it)."""
    buf = bytearray(nbytes)
    with open(path, "rb") as fh:
        fh.seek(offset)
        got = fh.readinto(buf)
    return buf if got == nbytes else buf[:got]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
