"""Import dumps made by another toolchain (bmrt_test / bmnetu ``cmp=True`` files) as a golden.

The ``.dat`` files carry no shapes, so they come from the model: its graph inputs (outputs) in
order, with axis 0 set to ``batch`` (the leading axis of a vision model is the batch; bmnetu
compiles the batch into the bmodel, which may differ from the ONNX file's). The byte sizes must
match exactly; a mismatch is explained with the likely causes, because the bytes alone cannot say
which tensor is which.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from harness.errors import GoldenCorruptError, GoldenError
from harness.golden.dat import copy_stream
from harness.golden.manifest import Manifest
from harness.golden.store import GoldenWriter
from harness.model import load_model

__all__ = ["import_dumps", "io_layout"]


def io_layout(proto: onnx.ModelProto, *, batch: int = 1) -> dict[str, list[tuple[str, np.dtype, tuple[int, ...]]]]:
    """``{"input": [(name, dtype, shape)...], "output": [...]}`` with axis 0 = ``batch``."""
    layout: dict[str, list[tuple[str, np.dtype, tuple[int, ...]]]] = {}
    for section, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        rows = []
        for vi in values:
            ttype = vi.type.tensor_type
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
            dims: list[int] = []
            for axis, d in enumerate(ttype.shape.dim):
                if axis == 0:
                    dims.append(batch)
                elif d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                else:
                    raise GoldenError(f"{section} {vi.name!r} has a dynamic axis {axis} ({d.dim_param or '?'})",
                                      expected="fixed shapes except the batch axis, to know the size of each tensor",
                                      remedy="export the model with fixed input sizes (or fix them with onnxsim)")
            rows.append((vi.name, dtype, tuple(dims)))
        layout[section] = rows
    return layout


def _size_hint(actual: int, expected: int, *, batch: int, dtypes: set[str]) -> str:
    hints = []
    per_image = expected // batch if batch else 0
    if per_image and actual % per_image == 0 and actual // per_image != batch:
        hints.append(f"a batch of {actual // per_image} instead of {batch}? (pass --batch {actual // per_image})")
    if "float32" in dtypes and actual * 2 == expected:
        hints.append("float16 dumps instead of float32?")
    if "float32" in dtypes and actual * 4 == expected:
        hints.append("int8/uint8 dumps (raw quantized tensors) instead of float32?")
    hints.append("the wrong model, or a file cut short by a copy?")
    hints.append("note NHWC vs NCHW does not change the size, so layout cannot be checked here")
    return "; ".join(hints)


def import_dumps(model_path: str | os.PathLike[str], input_dat: str | os.PathLike[str],
                 output_dat: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, batch: int = 1,
                 overwrite: bool = False, preprocessing: dict[str, Any] | None = None) -> Manifest:
    """Write a golden at ``out_dir`` from Sophon ``input_ref_data.dat`` / ``output_ref_data.dat``."""
    if batch < 1:
        raise GoldenError(f"Got batch {batch}", expected="a batch size >= 1")
    model = load_model(model_path)
    layout = io_layout(model.proto, batch=batch)
    sources = {"input": Path(input_dat), "output": Path(output_dat)}
    for section, path in sources.items():
        if not path.is_file():
            raise GoldenError(f"{section} dump {path} does not exist", expected="an existing .dat file")
        expected = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, d, s in layout[section])
        actual = path.stat().st_size
        if actual != expected:
            detail = ", ".join(f"{n} {d.name}{list(s)}" for n, d, s in layout[section])
            raise GoldenCorruptError(
                f"{path} has {actual} bytes; the model's {section}s ({detail}) need {expected} at batch {batch}",
                expected=f"exactly {expected} bytes",
                remedy=_size_hint(actual, expected, batch=batch, dtypes={d.name for _, d, _ in layout[section]}),
            )
    writer = GoldenWriter(out_dir, model_sha256=model.sha256, preprocessing=preprocessing, num_images=batch,
                          overwrite=overwrite, extra={"imported_from": {k: str(v) for k, v in sources.items()},
                                                      "model": str(model_path)})
    try:
        for section, path in sources.items():
            with open(path, "rb") as fh:
                for name, dtype, shape in layout[section]:
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    writer.write_raw(section, name, dtype=dtype, shape=shape, chunks=copy_stream(fh, nbytes))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise
