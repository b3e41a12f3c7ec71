"""``quant-harness golden import|verify`` through its command module, and through the dispatcher
(exit status 2 for a corrupt golden)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import pytest

import harness.cli as cli
from harness.commands import golden as cmd
from harness.errors import GoldenCorruptError, GoldenError
from tests.model_factory import conv_relu_model


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture
def dumps(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), model)
    (tmp_path / "input_ref_data.dat").write_bytes(np.ones((1, 3, 8, 8), np.float32).tobytes())
    (tmp_path / "output_ref_data.dat").write_bytes(np.arange(2, dtype=np.float32).tobytes())
    return model, tmp_path / "input_ref_data.dat", tmp_path / "output_ref_data.dat"


def test_import_then_verify(tmp_path: Path, dumps: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, i, o = dumps
    out = tmp_path / "golden" / "m"
    assert cmd.run(parse(["golden", "import", "--model", str(model), str(i), str(o), "--out", str(out)])) == 0
    assert "1 input and 1 output" in capsys.readouterr().out
    assert cmd.run(parse(["golden", "verify", str(out)])) == 0
    assert "OK" in capsys.readouterr().out
    with pytest.raises(GoldenError, match="--golden-update"):
        cmd.run(parse(["golden", "import", "--model", str(model), str(i), str(o), "--out", str(out)]))
    assert cmd.run(parse(["golden", "import", "--model", str(model), str(i), str(o), "--out", str(out), "--force"])) == 0


def test_default_out_dir(tmp_path: Path, dumps: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, i, o = dumps
    monkeypatch.chdir(tmp_path)
    assert cmd.run(parse(["golden", "import", "--model", str(model), str(i), str(o)])) == 0
    assert (tmp_path / "golden" / "m" / "manifest.json").is_file()


def test_verify_corrupt_exits_2_through_dispatcher(tmp_path: Path, dumps: tuple[Path, Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, i, o = dumps
    out = tmp_path / "g"
    cmd.run(parse(["golden", "import", "--model", str(model), str(i), str(o), "--out", str(out)]))
    data = bytearray((out / "output_ref_data.dat").read_bytes())
    data[0] ^= 1
    (out / "output_ref_data.dat").write_bytes(bytes(data))
    with pytest.raises(GoldenCorruptError, match="'output'"):
        cmd.run(parse(["golden", "verify", str(out)]))
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("harness.commands.golden",))
    assert cli.main(["golden", "verify", str(out)]) == 2
    assert "output_ref_data.dat" in capsys.readouterr().err


def test_no_action_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd.run(parse(["golden"])) == 2
