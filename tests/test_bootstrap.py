"""Paired bootstrap: determinism, interval sanity, shift recovery, VOC speed and pairing."""

from __future__ import annotations

import time

import numpy as np
import pytest

from harness.errors import DataError
from harness.metrics.bootstrap import paired_bootstrap
from harness.metrics.classification import ClassificationMetric
from harness.metrics.voc import VocAP


def test_deterministic_for_a_seed_and_seed_matters():
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    r1 = paired_bootstrap(a, b, n_resamples=200, seed=3)
    r2 = paired_bootstrap(a, b, n_resamples=200, seed=3)
    r3 = paired_bootstrap(a, b, n_resamples=200, seed=4)
    np.testing.assert_array_equal(r1.samples, r2.samples)
    assert (r1.ci_low, r1.ci_high) == (r2.ci_low, r2.ci_high)
    assert not np.array_equal(r1.samples, r3.samples)


def test_interval_contains_point_estimate_and_has_right_width():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 1.0, 400)
    b = a - 0.2 + rng.normal(0, 0.5, 400)
    r = paired_bootstrap(a, b, n_resamples=2000, seed=0)
    assert r.estimate == pytest.approx(np.mean(a - b))
    assert r.estimate in r
    # the standard error of a mean of 400 N(0.2, 0.5) differences is 0.025
    assert r.std == pytest.approx(0.025, rel=0.15)
    assert r.ci_high - r.ci_low == pytest.approx(2 * 1.96 * 0.025, rel=0.15)


def test_constant_shift_is_recovered_exactly():
    a = np.random.default_rng(2).random(100)
    r = paired_bootstrap(a, a - 0.125, n_resamples=300, seed=0)
    assert r.estimate == pytest.approx(0.125)
    assert r.ci_low == pytest.approx(0.125) and r.ci_high == pytest.approx(0.125)
    assert r.std == pytest.approx(0.0, abs=1e-12)


def test_classification_sources_and_custom_metric():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 300)
    fp32 = rng.normal(size=(300, 5))
    fp32[np.arange(300), labels] += 1.5
    int8 = fp32 + rng.normal(0, 0.5, size=fp32.shape)
    stats = []
    for logits in (fp32, int8):
        m = ClassificationMetric(num_classes=5)
        m.update(logits, labels)
        stats.append(m.stats())
    r = paired_bootstrap(*stats, n_resamples=300, seed=0)
    assert r.estimate == pytest.approx(stats[0].compute().top1 - stats[1].compute().top1)
    assert r.ci_low <= r.estimate <= r.ci_high
    top5 = lambda s, w: float(w @ (s.rank < 5) / w.sum())  # noqa: E731
    assert paired_bootstrap(*stats, metric=top5, n_resamples=50).estimate == 0.0


def _voc_stats(seed: int, n_images: int, jitter: float):
    rng = np.random.default_rng(seed)
    gts = []
    for _ in range(n_images):
        g = int(rng.integers(1, 5))
        xy = rng.uniform(0, 300, (g, 2))
        gts.append((np.concatenate([xy, xy + rng.uniform(20, 100, (g, 2))], 1), rng.integers(0, 20, g)))
    out = []
    for noise in (3.0, jitter):
        m = VocAP(num_classes=20, ap_method="area")
        for i, (gb, gl) in enumerate(gts):
            src = rng.integers(0, len(gl), 100)
            db = gb[src] + rng.normal(0, noise, (100, 4))
            dl = np.where(rng.random(100) < 0.7, gl[src], rng.integers(0, 20, 100))
            m.update(i, gb, gl, None, db, rng.random(100), dl)
        out.append(m.stats())
    return out


def test_voc_bootstrap_is_fast_and_sensible():
    fp32, int8 = _voc_stats(0, 200, jitter=25.0)  # int8 boxes much noisier
    t0 = time.perf_counter()
    r = paired_bootstrap(fp32, int8, n_resamples=1000, seed=0)
    elapsed = time.perf_counter() - t0
    assert r.estimate > 0 and r.ci_low <= r.estimate <= r.ci_high
    assert r.n_undefined == 0
    assert elapsed < 8.0, f"VOC bootstrap took {elapsed:.1f} s"  # ~1.5 s on the 2-core dev machines


def test_mismatched_sources_are_refused():
    with pytest.raises(DataError):
        paired_bootstrap(np.ones(3), np.ones(4))
