"""TapRunner: every float activation in topological order, streamed, matching an untapped run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from harness.errors import ConfigError, ModelFormatError
from harness.model import TapRunner, load_model, make_session, tensor_list, topological_nodes

from model_factory import conv_relu_model

REL_TOL = 1e-6  # fusion changes last bits when a tensor is exposed; see harness/model/runner.py


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture()
def small_model(tmp_path: Path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), str(path))
    return load_model(path)


def test_topological_order_does_not_depend_on_file_order() -> None:
    proto = conv_relu_model()
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    assert [n.output[0] for n in topological_nodes(proto.graph)] == [n.output[0] for n in nodes]


def test_dangling_input_is_a_clear_error() -> None:
    proto = conv_relu_model()
    proto.graph.node[1].input[0] = "nobody_makes_this"
    with pytest.raises(ModelFormatError, match="nobody_makes_this"):
        topological_nodes(proto.graph)


def test_all_taps_values_match_a_per_tensor_session(small_model) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    tapped = TapRunner(small_model).run(x)
    assert list(tapped) == [t.name for t in tensor_list(small_model.proto)]
    # Independent check: expose one tensor at a time in a plain session.
    for name, value in tapped.items():
        proto = onnx.ModelProto()
        proto.CopyFrom(small_model.proto)
        if name != "output":
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        sess = make_session(proto.SerializeToString())
        ref = sess.run([name], {"input": x})[0]
        assert _rel_err(value, ref) <= REL_TOL, name


def test_subset_always_includes_graph_outputs(small_model) -> None:
    runner = TapRunner(small_model, taps=["relu_out"])
    assert [t.name for t in runner.tensors] == ["relu_out", "output"]
    assert [t.index for t in runner.tensors] == [0, 1]
    assert [t.op_type for t in runner.tensors] == ["Relu", "Gemm"]
    assert [t.name for t in TapRunner(small_model, taps="none").tensors] == ["output"]


def test_unknown_tap_is_rejected(small_model) -> None:
    with pytest.raises(ConfigError, match="conv_w"):
        TapRunner(small_model, taps=["conv_w"])


def test_stream_reuses_buffers_and_counts_batches(small_model) -> None:
    runner = TapRunner(small_model)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(5)]
    seen_ids: set[int] = set()
    outputs: list[np.ndarray] = []

    def collect(batch) -> None:
        seen_ids.add(id(batch["conv_out"]))
        outputs.append(np.array(batch["output"]))

    assert runner.stream(batches, collect) == 5
    assert len(seen_ids) == 1  # one buffer, overwritten batch after batch: memory stays flat
    plain = make_session(small_model.serialized())
    for x, got in zip(batches, outputs):
        assert _rel_err(got, plain.run(None, {"input": x})[0]) <= REL_TOL


def test_bad_feeds_are_clear(small_model) -> None:
    runner = TapRunner(small_model)
    with pytest.raises(ConfigError, match="dtype"):
        runner.run(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ConfigError, match="NCHW"):
        runner.run(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match="input names"):
        runner.run({"image": np.zeros((1, 3, 8, 8), np.float32)})


# --- real models ------------------------------------------------------------------------------

def _images(folder: Path, size: tuple[int, int], mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    """The README's preprocessing, written out plainly (resize, RGB, normalise, NCHW)."""
    out = []
    for path in sorted(folder.iterdir())[:3]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        x = (rgb.astype(np.float32) - mean) / std
        out.append(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    return out


def _check_real_model(path: Path, images: list[np.ndarray], *, min_taps: int) -> TapRunner:
    model = load_model(path)
    runner = TapRunner(model)
    assert len(runner.tensors) >= min_taps
    plain = make_session(model.serialized())
    for x in images:
        tapped = runner.run(x)
        for name, ref in zip(model.output_names, plain.run(None, {model.input_names[0]: x})):
            assert _rel_err(tapped[name], ref) <= REL_TOL, name
        assert all(np.isfinite(v).all() for v in tapped.values())
    return runner


@pytest.mark.realmodel
@pytest.mark.parametrize(
    "name", ["version-RFB-320.onnx", "version-RFB-320_without_postprocessing.onnx", "version-slim-320.onnx"]
)
def test_ultraface_loads_normalises_and_taps(realmodels_dir: Path, name: str, capfd) -> None:
    path = realmodels_dir / "ultraface" / "onnx" / name
    original = onnx.load(str(path))
    assert original.opset_import[0].version == 9  # the real case the loader exists for
    model = load_model(path)
    assert model.opset >= 13 and model.input_names == ["input"]
    assert len(model.dropped_initializer_inputs) == len(original.graph.initializer)
    assert not any(t.name.endswith("num_batches_tracked") for t in model.proto.graph.initializer)
    capfd.readouterr()
    sess = make_session(model.serialized(), log_severity=1)  # warnings and info visible
    sess.run(None, {"input": np.zeros((1, 3, 240, 320), np.float32)})
    warnings = [line for line in capfd.readouterr().err.splitlines() if "[W:onnxruntime" in line]
    assert not warnings, warnings[:3]
    images = _images(realmodels_dir / "ultraface" / "images", (320, 240), np.float32(127), np.float32(128))
    runner = _check_real_model(path, images, min_taps=100)
    assert runner.tensors[0].op_type == "Conv"


@pytest.mark.realmodel
def test_mobilenet_v2_taps(realmodels_dir: Path) -> None:
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    images = _images(realmodels_dir / "mobilenet_v2" / "images", (224, 224), mean, std)
    runner = _check_real_model(realmodels_dir / "mobilenet_v2" / "mobilenet_v2.onnx", images, min_taps=100)
    ops = [t.op_type for t in runner.tensors]
    assert ops.count("Conv") == 52 and ops[-1] == "Gemm"
