"""GoldenWriter refuses NaN/Inf unless told they are expected, and a refusal leaves nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.errors import NumericError
from harness.golden import GoldenStore, GoldenWriter

GOOD = np.arange(24, dtype=np.float32).reshape(2, 3, 4)


def bad(value: float = np.nan) -> np.ndarray:
    out = GOOD.copy()
    out[1, 2, 0] = value
    out[1, 2, 3] = value
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write(target: Path, layer: np.ndarray, **kwargs: object) -> None:
    with GoldenWriter(target, model_sha256=None, num_images=2, extra={"probe_images": ["a.jpg", "b.jpg"]},
                      **kwargs) as w:
        w.write_input("input", GOOD)
        w.write_layer("conv_out", layer)
        w.write_output("logits", GOOD[:, 0])


def test_nan_layer_is_refused_naming_tensor_count_and_image(tmp_path: Path) -> None:
    with pytest.raises(NumericError) as info:
        write(tmp_path / "g", bad())
    message = str(info.value)
    assert ("layer tensor 'conv_out' holds 2 NaN/Inf values of 24 (2 NaN, 0 Inf; the first at [1, 2, 0], probe "
            "image 'b.jpg'); nothing was written") in message
    assert "[suite] allow_nonfinite = true" in info.value.remedy
    assert list(tmp_path.iterdir()) == []  # no golden, no temp directory


def test_refused_update_leaves_the_old_golden_byte_for_byte(tmp_path: Path) -> None:
    write(tmp_path / "g", GOOD)
    before = snapshot(tmp_path / "g")
    with pytest.raises(NumericError, match="the golden there is unchanged") as info:
        write(tmp_path / "g", bad(np.inf), overwrite=True)
    assert "0 NaN, 2 Inf" in str(info.value)
    assert snapshot(tmp_path / "g") == before and sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_writer_used_without_a_context_manager_cleans_up_itself(tmp_path: Path) -> None:
    w = GoldenWriter(tmp_path / "g", model_sha256=None)
    with pytest.raises(NumericError):
        w.write_output("logits", bad())
    assert list(tmp_path.iterdir()) == []


def test_float16_overflow_is_explained(tmp_path: Path) -> None:
    with np.errstate(over="ignore"):
        overflowed = (GOOD * 1e4).astype(np.float16)  # what the stage's float16 layer dumps do above 65504
    with pytest.raises(NumericError, match="float16 dumps hold at most 65504"):
        write(tmp_path / "g", overflowed)


def test_allow_nonfinite_writes_them(tmp_path: Path) -> None:
    write(tmp_path / "g", bad(), allow_nonfinite=True)
    stored = GoldenStore.open(tmp_path / "g").read_tensor("conv_out", section="layers")
    assert int(np.isnan(stored).sum()) == 2


def test_nan_in_a_json_side_file_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(NumericError, match=r"metrics.json holds a NaN or Inf number; nothing was written"):
        with GoldenWriter(tmp_path / "g", model_sha256=None, allow_nonfinite=True) as w:
            w.add_json("metrics.json", {"map": float("nan")})
    assert list(tmp_path.iterdir()) == []
