"""``quant-harness compare A B``: exit 0 pass / 1 tolerance failure / 2 user error, precisely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import harness.cli as cli
from harness.golden import GoldenWriter

RNG = np.random.default_rng(0)
X = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
CONV = RNG.standard_normal((1, 4, 4, 4)).astype(np.float32)
OUT = RNG.standard_normal((1, 10)).astype(np.float32)


def golden(path: Path, *, conv_noise: float = 0.0, out_shape: tuple[int, ...] | None = None) -> Path:
    noise = conv_noise * np.random.default_rng(1).standard_normal(CONV.shape).astype(np.float32)
    with GoldenWriter(path, model_sha256=None) as w:
        w.write_input("input", X)
        w.write_layer("conv_out", CONV + noise)
        w.write_output("output", OUT if out_shape is None else np.ones(out_shape, np.float32))
    return path


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("harness.commands.compare",))
    return cli.main


def test_identical_goldens_pass(tmp_path: Path, main, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(golden(tmp_path / "a")), str(golden(tmp_path / "b"))]) == 0
    out = capsys.readouterr().out
    assert "3 tensor(s) compared, 0 failed" in out and "tpu-mlir tool default" in out
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[1:4]] == ["input", "conv_out", "output"]  # topological order


def test_noisy_layer_fails_with_exit_1(tmp_path: Path, main, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = golden(tmp_path / "a"), golden(tmp_path / "b", conv_noise=0.5)
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1 failed" in out and "would pass with: cosine >=" in out
    assert main(["compare", str(a), str(b), "--tolerance", "cosine=0.5"]) == 0
    assert main(["compare", str(a), str(b), "--tolerance", "cosine=0.9999", "--tolerance", "conv*:cosine=0.5"]) == 0
    assert main(["compare", str(a), str(b), "--tolerance", "conv*:max_abs=1e-6"]) == 1


def test_json_output(tmp_path: Path, main, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = golden(tmp_path / "a"), golden(tmp_path / "b", conv_noise=0.5)
    assert main(["compare", str(a), str(b), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)  # strict JSON: inf is a string
    assert report["passed"] is False
    rows = {r["name"]: r for r in report["tensors"]}
    assert rows["input"]["sqnr_db"] == "inf" and rows["input"]["passed"] is True
    assert rows["conv_out"]["passed"] is False and rows["conv_out"]["min_passing"]["cosine"] < 0.99


def test_npz_and_dat_sources(tmp_path: Path, main) -> None:
    a = golden(tmp_path / "a")
    np.savez(tmp_path / "b.npz", conv_out=CONV, output=OUT)
    assert main(["compare", str(a), str(tmp_path / "b.npz")]) == 0
    np.savez(tmp_path / "c.npz", output=-OUT)
    assert main(["compare", str(tmp_path / "c.npz"), str(a)]) == 1
    (tmp_path / "output_ref_data.dat").write_bytes(OUT.tobytes())
    assert main(["compare", str(a), str(tmp_path / "output_ref_data.dat"), "--manifest", str(a)]) == 0
    (tmp_path / "other.dat").write_bytes((OUT * 0 + 1).tobytes())  # matched by size
    assert main(["compare", str(tmp_path / "other.dat"), str(a), "--manifest", str(a / "manifest.json")]) == 1


def test_size_mismatch_fails_with_exit_1(tmp_path: Path, main, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(golden(tmp_path / "a")), str(golden(tmp_path / "b", out_shape=(1, 5)))]) == 1
    assert "not comparable" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["pickle", "no_common", "missing", "dat_without_manifest", "bad_tolerance", "unknown"])
def test_user_errors_exit_2(tmp_path: Path, main, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    a = golden(tmp_path / "a")
    other = tmp_path / "x.npz"
    extra: list[str] = []
    if case == "pickle":
        np.savez(other, output=np.array([{"a": 1}], dtype=object))
    elif case == "no_common":
        np.savez(other, nothing=OUT)
    elif case == "missing":
        other = tmp_path / "missing.npz"
    elif case == "dat_without_manifest":
        other = tmp_path / "x.dat"
        other.write_bytes(OUT.tobytes())
    elif case == "bad_tolerance":
        np.savez(other, output=OUT)
        extra = ["--tolerance", "cosine=high"]
    else:
        other = tmp_path / "x.txt"
        other.write_text("hello")
    assert main(["compare", str(a), str(other), *extra]) == 2
    assert "error:" in capsys.readouterr().err


def test_long_tables_show_failures_first_within_a_screen(tmp_path: Path, main, capsys: pytest.CaptureFixture[str]) -> None:
    ref = {f"t{i:03d}": np.full(4, i + 1.0, np.float32) for i in range(60)}
    test = dict(ref, t050=-ref["t050"])
    np.savez(tmp_path / "a.npz", **ref)
    np.savez(tmp_path / "b.npz", **test)
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("t050") and "FAIL" in lines[1]
    assert len(lines) < 50 and any("20 more passing" in ln for ln in lines)
