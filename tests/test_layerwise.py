"""Layerwise comparison on synthetic sequences whose first divergent layer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.compare import LayerwiseComparison, Tolerance, ToleranceSet, predecessor_map
from harness.errors import ConfigError
from harness.model import TensorInfo, tensor_list
from tests.model_factory import conv_relu_model

N_LAYERS = 10


def chain(n: int = N_LAYERS) -> list[TensorInfo]:
    return [TensorInfo(i, f"t{i}", f"node{i}", "Conv" if i % 2 == 0 else "Relu", 1, (1, 64)) for i in range(n)]


def with_cosine(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """A tensor whose cosine with ``x`` is exactly ``c`` (up to float64 rounding)."""
    e = rng.standard_normal(x.shape)
    e -= (e.ravel() @ x.ravel()) / (x.ravel() @ x.ravel()) * x
    e *= np.linalg.norm(x) / np.linalg.norm(e)
    return c * x + math.sqrt(max(1 - c * c, 0.0)) * e


def run(cosines: list[float], *, local: dict[int, float] | None = None, gate: float = 0.99, images: int = 2):
    rng = np.random.default_rng(0)
    cmp = LayerwiseComparison(chain(len(cosines)), tolerances=ToleranceSet(default=Tolerance(cosine=gate, source="test")))
    for _ in range(images):
        for i, c in enumerate(cosines):
            ref = rng.standard_normal((1, 64))
            cmp.update_accumulated(f"t{i}", ref, with_cosine(ref, c, rng))
            if local and i in local:
                cmp.update_local(f"t{i}", ref, with_cosine(ref, local[i], rng))
    return cmp


def test_with_cosine_helper_is_exact() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(100)
    y = with_cosine(x, 0.9, rng)
    assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) == pytest.approx(0.9, abs=1e-12)


def test_big_error_at_layer5_is_found_not_its_heirs() -> None:
    cos = [0.9999] * 5 + [0.90, 0.89, 0.885, 0.88, 0.87]
    div = run(cos).first_divergent_layer()
    assert div is not None and div.index == 5 and div.name == "t5" and div.reason == "jump"
    assert div.op_type == "Relu" and div.node_name == "node5"
    assert div.accumulated.cosine == pytest.approx(0.90, abs=1e-9)
    assert div.inherited == pytest.approx(0.9999, abs=1e-9) and div.bound == 0.99
    assert "node5" in div.describe()


def test_noisy_early_layers_under_threshold_are_not_chosen() -> None:
    cos = [0.991, 0.9905, 0.992, 0.993, 0.992, 0.80, 0.79, 0.79, 0.78, 0.78]
    assert run(cos).first_divergent_layer().index == 5


def test_local_error_explains_the_layer() -> None:
    # t3 crosses by drift (a small jump); t4's jump is small too, but its own quantisation fails
    cos = [0.997, 0.994, 0.991, 0.988, 0.98, 0.975, 0.97, 0.97, 0.97, 0.97]
    result = run(cos, local={2: 0.995, 4: 0.95})
    div = result.first_divergent_layer()
    assert div.index == 4 and div.reason == "local" and div.local.cosine == pytest.approx(0.95, abs=1e-9)


def test_slow_drift_then_big_jump_picks_the_jump() -> None:
    cos = [0.998, 0.995, 0.992, 0.989, 0.987, 0.985, 0.70, 0.69, 0.69, 0.68]
    div = run(cos).first_divergent_layer()
    assert div.index == 6 and div.reason == "jump"


def test_pure_drift_reports_earliest_crossing() -> None:
    cos = [1 - 0.003 * (i + 1) for i in range(N_LAYERS)]  # 0.997, 0.994, 0.991, 0.988 ...
    div = run(cos).first_divergent_layer()
    assert div.index == 3 and div.reason == "drift"


def test_nothing_crosses() -> None:
    result = run([0.999] * N_LAYERS).compute()
    assert result and result.first_divergent_layer() is None
    assert result.first_divergent_layer(0.9999).index == 0  # a float gate overrides the tolerances


def test_per_tensor_tolerance_overrides() -> None:
    cos = [0.9999] * 5 + [0.95] * 5
    cmp = run(cos)
    cmp.tolerances = ToleranceSet(default=Tolerance(cosine=0.99), overrides=(("t5", Tolerance(cosine=0.9)),))
    assert cmp.first_divergent_layer().index == 6


def test_table_and_dataframe_in_topological_order() -> None:
    result = run([0.9999] * 5 + [0.9] * 5).compute()
    df = result.to_dataframe()
    assert list(df["name"]) == [f"t{i}" for i in range(N_LAYERS)]
    assert list(df["passed"]) == [True] * 5 + [False] * 5
    assert df["acc_cosine"].iloc[5] == pytest.approx(0.9, abs=1e-9)
    assert math.isnan(df["local_cosine"].iloc[0])
    assert not result and [r.name for r in result.failed_rows] == [f"t{i}" for i in range(5, 10)]


def test_merge_equals_single_stream() -> None:
    a = run([0.99, 0.9], images=1)
    b = run([0.99, 0.9], images=1)
    both = run([0.99, 0.9], images=2)  # same rng sequence: images 1 and 2
    merged = a.merge(b).compute().rows[1].accumulated
    assert merged.count == both.compute().rows[1].accumulated.count == 128
    assert merged.cosine == pytest.approx(0.9, abs=1e-9)


def test_update_batch_and_unknown_name() -> None:
    cmp = LayerwiseComparison(chain(2))
    x = np.ones((1, 4))
    cmp.update({"t0": x, "t1": x, "other": x}, {"t0": x, "t1": -x}, {"t0": (x, x)})
    rows = cmp.compute().rows
    assert rows[0].accumulated.cosine == 1.0 and rows[1].accumulated.cosine == -1.0 and rows[0].local.cosine == 1.0
    with pytest.raises(ConfigError, match="'nope'"):
        cmp.update_accumulated("nope", x, x)


def test_predecessors_from_a_real_graph() -> None:
    proto = conv_relu_model()
    from harness.model import normalise_model

    proto, _ = normalise_model(proto)
    tensors = tensor_list(proto)
    preds = predecessor_map(proto, tensors)
    assert preds["bn_out"] == ("conv_out",) and preds["conv_out"] == ()
    cmp = LayerwiseComparison(tensors, predecessors=preds)
    rng = np.random.default_rng(0)
    for t in tensors:
        ref = rng.standard_normal(16)
        c = 0.5 if t.name == "relu_out" else 0.9999
        cmp.update_accumulated(t.name, ref, with_cosine(ref, c, rng))
    div = cmp.first_divergent_layer()
    assert div.name == "relu_out" and div.op_type == "Relu"
