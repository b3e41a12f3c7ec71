"""Golden store: Sophon layout, checksums naming file + tensor, atomic commit, no silent overwrite,
format versions, unused goldens, and importing bmrt_test cmp dumps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import harness.golden.store as store_mod
from harness.errors import GoldenCorruptError, GoldenError, GoldenMissingError
from harness.golden import FORMAT_VERSION, GoldenStore, GoldenWriter, import_dumps
from tests.model_factory import conv_relu_model

RNG = np.random.default_rng(0)
INPUT = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)  # two probe images, stacked on axis 0
LAYERS = {"conv_out": RNG.standard_normal((2, 4, 4, 4)).astype(np.float32),
          "relu_out": RNG.random((2, 4, 4, 4)).astype(np.float32)}
OUTPUT = RNG.standard_normal((2, 2)).astype(np.float32)


def write_golden(target: Path, *, overwrite: bool = False, scale: float = 1.0) -> None:
    with GoldenWriter(target, model_sha256="ab" * 32, preprocessing={"mean": [127.5], "std": [127.5]},
                      num_images=2, overwrite=overwrite, extra={"note": "test"}) as w:
        w.write_input("input", INPUT * scale)
        for name, arr in LAYERS.items():
            w.write_layer(name, arr * scale)
        w.write_output("output", OUTPUT * scale)
        w.add_json("metrics.json", {"fp32": {"top1": 0.71}, "int8": {"top1": 0.70}})
        w.add_file("calibration_table", "# tpu-mlir\nconv_out 1.5 -1.2 1.5\n")


def test_roundtrip_layout_and_manifest(tmp_path: Path) -> None:
    root = tmp_path / "golden" / "suite"
    write_golden(root)
    # Sophon cmp layout, checked independently of the reader: raw LE bytes, no header, in order.
    assert (root / "input_ref_data.dat").read_bytes() == INPUT.astype("<f4").tobytes()
    assert (root / "output_ref_data.dat").read_bytes() == OUTPUT.tobytes()
    assert (root / "layers.dat").read_bytes() == LAYERS["conv_out"].tobytes() + LAYERS["relu_out"].tobytes()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert set(manifest["versions"]) == {"harness", "numpy", "onnxruntime"}
    assert manifest["preprocessing"] == {"mean": [127.5], "std": [127.5]} and manifest["num_images"] == 2
    relu = next(t for t in manifest["tensors"] if t["name"] == "relu_out")
    assert relu["offset"] == LAYERS["conv_out"].nbytes and relu["shape"] == [2, 4, 4, 4] and relu["dtype"] == "float32"
    assert {f["name"] for f in manifest["files"]} >= {"metrics.json", "calibration_table", "layers.dat"}

    store = GoldenStore.open(root)
    np.testing.assert_array_equal(store.read_tensor("relu_out"), LAYERS["relu_out"])
    np.testing.assert_array_equal(store.read_tensor("input"), INPUT)
    assert store.read_json("metrics.json")["int8"]["top1"] == 0.70
    assert store.read_file("calibration_table").startswith(b"# tpu-mlir")
    assert [t.name for t in store.unused_tensors()] == ["output", "conv_out"]  # manifest order: input, output, layers
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_big_endian_arrays_are_stored_little_endian(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=">f4").reshape(2, 3)
    with GoldenWriter(tmp_path / "g", model_sha256=None) as w:
        w.write_input("x", arr)
    assert (tmp_path / "g" / "input_ref_data.dat").read_bytes() == arr.astype("<f4").tobytes()
    np.testing.assert_array_equal(GoldenStore.open(tmp_path / "g").read_tensor("x"), arr)


def test_missing_golden(tmp_path: Path) -> None:
    with pytest.raises(GoldenMissingError, match="--golden-update"):
        GoldenStore.open(tmp_path / "nothing")


def test_truncated_file_names_file_and_tensor(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    path = tmp_path / "g" / "layers.dat"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(GoldenCorruptError, match=r"layers\.dat.*'relu_out'"):
        GoldenStore.open(tmp_path / "g")


def test_missing_dat_file(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    (tmp_path / "g" / "output_ref_data.dat").unlink()
    with pytest.raises(GoldenCorruptError, match="output_ref_data.dat"):
        GoldenStore.open(tmp_path / "g")


def edit_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_edited_tensor_named_eager_and_lazy(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    edit_byte(tmp_path / "g" / "layers.dat", LAYERS["conv_out"].nbytes + 5)  # inside relu_out
    with pytest.raises(GoldenCorruptError, match=r"'relu_out'.*layers\.dat"):
        GoldenStore.open(tmp_path / "g")
    lazy = GoldenStore.open(tmp_path / "g", verify="lazy")
    np.testing.assert_array_equal(lazy.read_tensor("conv_out"), LAYERS["conv_out"])
    with pytest.raises(GoldenCorruptError, match="relu_out"):
        lazy.read_tensor("relu_out")


def test_edited_side_file(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    edit_byte(tmp_path / "g" / "metrics.json", 3)
    with pytest.raises(GoldenCorruptError, match="metrics.json"):
        GoldenStore.open(tmp_path / "g")


def test_unknown_tensor_and_file(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    store = GoldenStore.open(tmp_path / "g")
    with pytest.raises(GoldenMissingError, match="'nope'"):
        store.read_tensor("nope")
    with pytest.raises(GoldenMissingError):
        store.read_file("other.json")


@pytest.mark.parametrize(("version", "remedy"), [(2, "upgrade quant-harness"), (0, "--golden-update"), (None, "--golden-update")])
def test_format_version_refused(tmp_path: Path, version: int | None, remedy: str) -> None:
    write_golden(tmp_path / "g")
    mpath = tmp_path / "g" / "manifest.json"
    data = json.loads(mpath.read_text())
    data["format_version"] = version
    mpath.write_text(json.dumps(data))
    with pytest.raises(GoldenError, match=remedy):
        GoldenStore.open(tmp_path / "g")


def test_no_overwrite_without_flag(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    with pytest.raises(GoldenError, match="--golden-update"):
        write_golden(tmp_path / "g", scale=2.0)
    np.testing.assert_array_equal(GoldenStore.open(tmp_path / "g").read_tensor("input"), INPUT)
    write_golden(tmp_path / "g", overwrite=True, scale=2.0)
    np.testing.assert_array_equal(GoldenStore.open(tmp_path / "g").read_tensor("input"), INPUT * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_exception_mid_write_keeps_old_golden(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    with pytest.raises(RuntimeError, match="boom"):
        with GoldenWriter(tmp_path / "g", model_sha256=None, overwrite=True) as w:
            w.write_input("input", INPUT * 3)
            w.write_layer("conv_out", LAYERS["conv_out"] * 3)
            raise RuntimeError("boom")
    np.testing.assert_array_equal(GoldenStore.open(tmp_path / "g").read_tensor("conv_out"), LAYERS["conv_out"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_killed_writer_leaves_old_golden_readable(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    w = GoldenWriter(tmp_path / "g", model_sha256=None, overwrite=True)
    w.write_input("input", INPUT * 3)  # ... and the process dies: no commit, no abort
    np.testing.assert_array_equal(GoldenStore.open(tmp_path / "g").read_tensor("input"), INPUT)
    w.abort()


def test_failed_swap_restores_old_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_golden(tmp_path / "g")
    real_rename = os.rename
    calls = []

    def flaky_rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old -> .old-* succeeded; tmp -> target fails
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(store_mod.os, "rename", flaky_rename)
    with pytest.raises(OSError, match="disk full"):
        write_golden(tmp_path / "g", overwrite=True, scale=5.0)
    monkeypatch.undo()
    np.testing.assert_array_equal(GoldenStore.open(tmp_path / "g").read_tensor("output"), OUTPUT)
    assert calls[0][1].startswith(".g.old-")


def test_interrupted_swap_points_to_old_copy(tmp_path: Path) -> None:
    write_golden(tmp_path / "g")
    os.rename(tmp_path / "g", tmp_path / ".g.old-1234")
    with pytest.raises(GoldenMissingError, match=r"\.g\.old-1234"):
        GoldenStore.open(tmp_path / "g")


# --- importing bmrt_test cmp dumps ---------------------------------------------------------------
@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    return path


def test_import_dumps(tmp_path: Path, model_path: Path) -> None:
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    y = RNG.standard_normal((1, 2)).astype(np.float32)
    (tmp_path / "input_ref_data.dat").write_bytes(x.tobytes())
    (tmp_path / "output_ref_data.dat").write_bytes(y.tobytes())
    manifest = import_dumps(model_path, tmp_path / "input_ref_data.dat", tmp_path / "output_ref_data.dat",
                            tmp_path / "golden" / "m")
    assert [(t.section, t.name, t.shape) for t in manifest.tensors] == [("input", "input", (1, 3, 8, 8)),
                                                                         ("output", "output", (1, 2))]
    store = GoldenStore.open(tmp_path / "golden" / "m")
    np.testing.assert_array_equal(store.read_tensor("input"), x)
    np.testing.assert_array_equal(store.read_tensor("output"), y)
    assert store.manifest.model_sha256 is not None and len(store.manifest.model_sha256) == 64


@pytest.mark.parametrize(("factor", "hint"), [(2, "--batch 2"), (0.5, "float16"), (0.25, "int8")])
def test_import_size_mismatch_explains(tmp_path: Path, model_path: Path, factor: float, hint: str) -> None:
    (tmp_path / "in.dat").write_bytes(b"\0" * int(3 * 8 * 8 * 4 * factor))
    (tmp_path / "out.dat").write_bytes(b"\0" * 8)
    with pytest.raises(GoldenCorruptError, match=hint) as info:
        import_dumps(model_path, tmp_path / "in.dat", tmp_path / "out.dat", tmp_path / "g")
    assert "768" in str(info.value) and "NHWC" in str(info.value)
    assert not (tmp_path / "g").exists()


def test_import_with_batch(tmp_path: Path, model_path: Path) -> None:
    (tmp_path / "in.dat").write_bytes(np.ones((2, 3, 8, 8), np.float32).tobytes())
    (tmp_path / "out.dat").write_bytes(np.ones((2, 2), np.float32).tobytes())
    manifest = import_dumps(model_path, tmp_path / "in.dat", tmp_path / "out.dat", tmp_path / "g", batch=2)
    assert manifest.num_images == 2 and manifest.tensors[0].shape == (2, 3, 8, 8)


def test_manifest_records_when_it_was_written_and_old_ones_still_load(tmp_path: Path) -> None:
    """The date a metrics-baseline failure quotes; goldens from before it load with ``created`` None."""
    from datetime import datetime

    root = tmp_path / "golden" / "suite"
    write_golden(root)
    manifest = GoldenStore.open(root).manifest
    assert manifest.created is not None and datetime.fromisoformat(manifest.created).tzinfo is not None
    data = json.loads((root / "manifest.json").read_text())
    del data["created"]
    old = store_mod.Manifest.from_json(json.dumps(data))
    assert old.created is None and "created" not in json.loads(old.to_json())
