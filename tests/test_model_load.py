"""load_model: every refusal has its own clear error; normalisation keeps names and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.errors import ModelExternalDataError, ModelFormatError, ModelNotFoundError
from harness.model import MIN_OPSET, load_model, make_session, tensor_list

from model_factory import conv_relu_model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="is a directory"):
        load_model(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        load_model(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    data = conv_relu_model().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_model(path)


def test_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1234\n")
    with pytest.raises(ModelFormatError, match="Git LFS pointer") as info:
        load_model(path)
    assert "git lfs pull" in str(info.value)


@pytest.mark.parametrize("page", ["<!DOCTYPE html><html><body>Sign in</body></html>", "\n  <html><head></head></html>"])
def test_html_page(tmp_path: Path, page: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_text(page)
    with pytest.raises(ModelFormatError, match="HTML"):
        load_model(path)


def test_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelFormatError, match="not an ONNX") as info:
        load_model(path)
    assert "Expected" in str(info.value) and "Try" in str(info.value)


def test_protobuf_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(numpy_helper.from_array(np.zeros(3, np.float32), "t").SerializeToString())
    with pytest.raises(ModelFormatError):
        load_model(path)


def _external_model(tmp_path: Path) -> Path:
    model = conv_relu_model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    return path


def test_external_data_loads(tmp_path: Path) -> None:
    model = load_model(_external_model(tmp_path))
    assert model.proto.graph.initializer[0].raw_data


def test_external_data_missing(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelExternalDataError, match="ext.data"):
        load_model(path)


def test_external_data_truncated(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(ModelExternalDataError, match="truncated"):
        load_model(path)


def test_normalise_old_model(tmp_path: Path) -> None:
    """IR 4, opset 9, initializers listed as inputs: the UltraFace shape of problem, built here."""
    original = conv_relu_model(opset=9, ir_version=4, init_as_inputs=True)
    path = _save(original, tmp_path / "old.onnx")
    model = load_model(path)
    assert model.original_opset == 9 and model.opset >= MIN_OPSET
    assert model.input_names == ["input"]
    assert set(model.dropped_initializer_inputs) == {t.name for t in original.graph.initializer}
    onnx.checker.check_model(model.proto)
    old_names = {o for n in original.graph.node for o in n.output}
    assert old_names <= {t.name for t in tensor_list(model.proto)} | {"output"}
    # shapes were inferred for the intermediate tensors
    assert {t.name: t.shape for t in tensor_list(model.proto)}["conv_out"] == (1, 4, 8, 8)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    before = make_session(original.SerializeToString()).run(None, {"input": x})[0]
    after = make_session(model.serialized()).run(None, {"input": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_sha256_is_of_the_file(tmp_path: Path) -> None:
    import hashlib

    path = _save(conv_relu_model(), tmp_path / "m.onnx")
    assert load_model(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unnamed_nodes_fall_back_to_output_name(tmp_path: Path) -> None:
    model = load_model(_save(conv_relu_model(), tmp_path / "m.onnx"))
    infos = {t.name: t for t in tensor_list(model.proto)}
    assert infos["relu_out"].node_name == "relu_out"
    assert infos["conv_out"].node_name == "conv1"
    assert [t.name for t in tensor_list(model.proto)] == ["conv_out", "bn_out", "relu_out", "pool_out", "flat", "output"]
