"""VOC AP: hand-computed cases, an independent per-detection reference loop, and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError, DataError
from harness.metrics.voc import VocAP

E = np.zeros((0, 4))
EL = np.zeros(0, dtype=np.int64)


def one_class(*, ap_method="11point", **kw) -> VocAP:
    return VocAP(class_names=["a"], ap_method=ap_method, **kw)


def ap_of(metric: VocAP, name: str = "a") -> float:
    return metric.compute().ap[name]


# -- hand-computed cases ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["11point", "area"])
def test_score_tie_breaks_by_insertion_order(method):
    gt = np.array([[0, 0, 10, 10]])
    hit, miss = [0, 0, 10, 10], [50, 50, 60, 60]
    first_hit = one_class(ap_method=method)
    first_hit.update("i", gt, [0], None, [hit, miss], [0.5, 0.5], [0, 0])
    first_miss = one_class(ap_method=method)
    first_miss.update("i", gt, [0], None, [miss, hit], [0.5, 0.5], [0, 0])
    assert ap_of(first_hit) == 1.0  # curve (r, p): (1, 1), (1, .5)
    assert ap_of(first_miss) == 0.5  # curve: (0, 0), (1, .5)


@pytest.mark.parametrize("method, expected", [("11point", (6 + 5 * 2 / 3) / 11), ("area", 0.5 + 0.5 * 2 / 3)])
def test_duplicate_detection_of_one_object_is_false_positive(method, expected):
    m = one_class(ap_method=method)
    a, b = [0, 0, 10, 10], [20, 20, 30, 30]
    m.update("i", [a, b], [0, 0], None, [a, a, b], [0.9, 0.8, 0.7], [0, 0, 0])  # tp, fp (dup), tp
    assert ap_of(m) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(m.compute().precision["a"], [1, 0.5, 2 / 3])


@pytest.mark.parametrize("method", ["11point", "area"])
def test_difficult_objects_ignored_or_counted(method):
    a, b, x = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]
    dets = ([x, b, b, a], [0.95, 0.9, 0.85, 0.8], [0, 0, 0, 0])  # fp, difficult, difficult dup, tp
    ignore = one_class(ap_method=method)
    ignore.update("i", [a, b], [0, 0], [False, True], *dets)
    # Difficult hits (including the duplicate) vanish: curve fp, tp -> (0, 0), (1, .5).
    assert ap_of(ignore) == pytest.approx(0.5)
    assert ignore.compute().n_pos["a"] == 1
    count = one_class(ap_method=method, difficult="count")
    count.update("i", [a, b], [0, 0], [False, True], *dets)
    # fp, tp, fp (dup), tp over 2 positives: (0,0) (.5,.5) (.5,1/3) (1,.5)
    assert ap_of(count) == pytest.approx(0.5)
    assert count.compute().n_pos["a"] == 2
    np.testing.assert_allclose(count.compute().recall["a"], [0, 0.5, 0.5, 1.0])


def test_images_without_ground_truth_and_classes_without_positives():
    m = VocAP(class_names=["a", "b"], ap_method="area")
    m.update("gt", [[0, 0, 10, 10]], [0], None, [[0, 0, 10, 10]], [0.5], [0])
    m.update("empty", E, EL, None, [[0, 0, 10, 10], [0, 0, 5, 5]], [0.9, 0.4], [0, 1])
    r = m.compute()
    assert r.ap["a"] == pytest.approx(0.5)  # fp at 0.9 in the empty image, then the tp
    assert np.isnan(r.ap["b"])  # no positives: undefined, not 0
    assert r.map == pytest.approx(0.5)  # mean over classes with positives only
    assert r.n_images == 2


def test_class_with_positives_but_no_detections_has_ap_zero():
    m = VocAP(class_names=["a", "b"])
    m.update("i", [[0, 0, 10, 10], [0, 0, 10, 10]], [0, 1], None, [[0, 0, 10, 10]], [0.5], [0])
    r = m.compute()
    assert r.ap == {"a": 1.0, "b": 0.0}
    assert r.map == 0.5


@pytest.mark.parametrize("rule, expected", [(">=", 1.0), (">", 0.0)])
def test_match_rule_at_iou_exactly_half(rule, expected):
    m = one_class(match_rule=rule, pixel_plus_one=False)
    m.update("i", [[0, 0, 10, 10]], [0], None, [[0, 0, 10, 5]], [0.9], [0])  # IoU 50 / 100
    assert ap_of(m) == expected


@pytest.mark.parametrize("plus_one, expected", [(True, 1.0), (False, 0.0)])
def test_pixel_plus_one_convention(plus_one, expected):
    # Inclusive pixels: 10x10 GT, 10x5 det -> IoU 0.5; continuous: 9x9 vs 9x4 -> 36/81.
    m = one_class(pixel_plus_one=plus_one)
    m.update("i", [[1, 1, 10, 10]], [0], None, [[1, 1, 10, 5]], [0.9], [0])
    assert ap_of(m) == expected


def test_eleven_point_uses_exact_recall_thresholds():
    # 3 of 10 objects found: recall is exactly 3/10, which must satisfy "recall >= 0.3".
    m = one_class()
    gts = [[20 * k, 0, 20 * k + 10, 10] for k in range(10)]
    m.update("i", gts, [0] * 10, None, gts[:3], [0.9, 0.8, 0.7], [0, 0, 0])
    assert ap_of(m) == pytest.approx(4 / 11, abs=1e-15)


def test_candidate_is_best_iou_even_if_already_matched():
    # Devkit rule: the 2nd detection's best object is A (taken), so it is FP even though it also
    # overlaps B above 0.5.
    a, b = [0, 0, 100, 100], [0, 0, 100, 80]
    m = one_class(ap_method="area")
    m.update("i", [a, b], [0, 0], None, [a, [0, 0, 100, 95]], [0.9, 0.8], [0, 0])
    np.testing.assert_array_equal(m.compute().recall["a"], [0.5, 0.5])


def test_bad_input_is_refused():
    m = one_class()
    with pytest.raises(DataError):
        m.update("i", [[0, 0, 1]], [0], None, E, [], EL)
    with pytest.raises(DataError):
        m.update("i", E, EL, None, [[0, 0, 1, 1]], [0.5], [3])
    with pytest.raises(DataError):
        m.update("i", E, EL, None, [[0, 0, 1, 1]], [np.nan], [0])
    m.update("i", E, EL, None, E, [], EL)
    with pytest.raises(DataError):
        m.update("i", E, EL, None, E, [], EL)
    with pytest.raises(ConfigError):
        VocAP(num_classes=2, ap_method="101point")
    with pytest.raises(ConfigError):
        one_class().merge(one_class(ap_method="area"))


# -- independent reference ----------------------------------------------------------------------
def reference_ap(images, *, num_classes, ap_method, difficult, plus_one, rule, thr=0.5):
    """Classic per-class loop, written independently of harness.metrics (one detection at a time)."""
    one = 1.0 if plus_one else 0.0
    aps = []
    for c in range(num_classes):
        npos, objs, dets = 0, {}, []
        for i, (_, gb, gl, gd, db, ds, dl) in enumerate(images):
            m = gl == c
            objs[i] = [list(b) for b in gb[m]], list(gd[m]), [False] * int(m.sum())
            npos += int(m.sum()) if difficult == "count" else int((~gd[m]).sum())
            dets += [(-s, len(dets) + k, i, list(b)) for k, (s, b) in enumerate(zip(ds[dl == c], db[dl == c]))]
        dets.sort(key=lambda d: (d[0], d[1]))  # score desc, then insertion order
        tp, fp = [], []
        for _, _, i, (x1, y1, x2, y2) in dets:
            boxes, diff, taken = objs[i]
            best, arg = -1.0, -1
            for j, (gx1, gy1, gx2, gy2) in enumerate(boxes):
                iw = max(min(x2, gx2) - max(x1, gx1) + one, 0.0)
                ih = max(min(y2, gy2) - max(y1, gy1) + one, 0.0)
                inter = iw * ih
                union = (x2 - x1 + one) * (y2 - y1 + one) + (gx2 - gx1 + one) * (gy2 - gy1 + one) - inter
                iou = inter / union if union > 0 else 0.0
                if iou > best:
                    best, arg = iou, j
            ok = best >= thr if rule == ">=" else best > thr
            if ok and diff[arg] and difficult == "ignore":
                continue
            hit = ok and not taken[arg]
            if hit:
                taken[arg] = True
            tp.append(float(hit))
            fp.append(float(not hit))
        if npos == 0:
            aps.append(np.nan)
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = ctp / npos, ctp / np.maximum(ctp + cfp, 1e-300)
        if ap_method == "11point":
            ap = 0.0
            for k in range(11):
                ap += (prec[rec >= k / 10].max() if (rec >= k / 10).any() else 0.0) / 11
        else:
            r = np.concatenate([[0.0], rec, [1.0]])
            p = np.concatenate([[0.0], prec, [0.0]])
            for k in range(len(p) - 2, -1, -1):
                p[k] = max(p[k], p[k + 1])
            ap = sum((r[k + 1] - r[k]) * p[k + 1] for k in range(len(r) - 1) if r[k + 1] != r[k])
        aps.append(ap)
    return np.array(aps)


def random_images(rng, *, n_images, num_classes, max_gt=4, max_det=8, tie_decimals=None):
    images = []
    for i in range(n_images):
        g = int(rng.integers(0, max_gt + 1))
        xy = rng.integers(0, 60, size=(g, 2)).astype(float)
        gb = np.concatenate([xy, xy + rng.integers(2, 30, size=(g, 2))], axis=1)
        gl = rng.integers(0, num_classes, size=g)
        gd = rng.random(g) < 0.2
        d = int(rng.integers(0, max_det + 1))
        if g:
            db = gb[rng.integers(0, g, size=d)] + rng.integers(-4, 5, size=(d, 4))
        else:
            db = np.tile([0.0, 0.0, 5.0, 5.0], (d, 1))
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2])
        dl = np.where(rng.random(d) < 0.8, gl[rng.integers(0, g, size=d)] if g else 0,
                      rng.integers(0, num_classes, size=d))
        ds = rng.random(d)
        if tie_decimals is not None:
            ds = np.round(ds, tie_decimals)
        images.append((f"img{i}", gb, gl, gd, db, ds, dl))
    return images


def build(images, **kw) -> VocAP:
    m = VocAP(**kw)
    for image in images:
        m.update(*image)
    return m


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ap_method", ["11point", "area"])
def test_matches_independent_reference_on_random_data(seed, ap_method):
    rng = np.random.default_rng(seed)
    difficult = ("ignore", "count")[seed % 2]
    plus_one = seed % 3 != 0
    rule = (">=", ">")[seed // 3 % 2]
    images = random_images(rng, n_images=40, num_classes=3, tie_decimals=1)  # many ties
    m = build(images, num_classes=3, ap_method=ap_method, difficult=difficult, pixel_plus_one=plus_one,
              match_rule=rule)
    expected = reference_ap(images, num_classes=3, ap_method=ap_method, difficult=difficult,
                            plus_one=plus_one, rule=rule)
    got = np.array(list(m.compute().ap.values()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # The resampling fast path agrees with the exact path.
    assert m.stats().value_on(np.ones(40)) == pytest.approx(np.nanmean(expected), abs=1e-12)


def test_weighted_compute_equals_duplicated_images():
    rng = np.random.default_rng(7)
    images = random_images(rng, n_images=30, num_classes=3)  # distinct scores: no cross-image ties
    idx = rng.integers(0, 30, size=30)
    m = build(images, num_classes=3, ap_method="area")
    dup = build([(f"copy{k}", *images[i][1:]) for k, i in enumerate(idx)], num_classes=3, ap_method="area")
    expected = dup.compute()
    got = m.compute_on(idx)
    np.testing.assert_allclose(list(got.ap.values()), list(expected.ap.values()), atol=1e-12)
    weights = np.bincount(idx, minlength=30)
    assert m.stats().value_on(weights) == pytest.approx(expected.map, abs=1e-12)
    assert m.stats().compute_on(idx) == pytest.approx(expected.map, abs=1e-12)


def test_many_images_flush_in_chunks_like_one_batch():
    rng = np.random.default_rng(3)
    images = random_images(rng, n_images=2500, num_classes=2, max_det=3, tie_decimals=2)
    m = build(images, num_classes=2)
    expected = reference_ap(images, num_classes=2, ap_method="11point", difficult="ignore", plus_one=True,
                            rule=">=")
    np.testing.assert_allclose(list(m.compute().ap.values()), expected, atol=1e-12)


# -- properties ---------------------------------------------------------------------------------
seeds = st.integers(0, 2**32 - 1)
methods = st.sampled_from(["11point", "area"])


@settings(max_examples=40, deadline=None)
@given(seed=seeds, method=methods)
def test_perfect_detections_give_ap_one(seed, method):
    rng = np.random.default_rng(seed)
    images = random_images(rng, n_images=8, num_classes=3)
    perfect = [(i, gb, gl, gd, gb, rng.random(len(gl)), gl) for i, gb, gl, gd, *_ in images]
    r = build(perfect, num_classes=3, ap_method=method, difficult="count").compute()
    assert all(v == pytest.approx(1.0) for v in r.ap.values() if not np.isnan(v))


@settings(max_examples=40, deadline=None)
@given(seed=seeds, method=methods)
def test_invariant_to_image_order_and_monotone_score_transform(seed, method):
    rng = np.random.default_rng(seed)
    images = random_images(rng, n_images=12, num_classes=2)  # continuous scores: no ties
    base = build(images, num_classes=2, ap_method=method).compute()
    shuffled = [images[i] for i in rng.permutation(len(images))]
    transformed = [(i, gb, gl, gd, db, np.exp(3 * ds) - 7, dl) for i, gb, gl, gd, db, ds, dl in images]
    for variant in (shuffled, transformed):
        r = build(variant, num_classes=2, ap_method=method).compute()
        np.testing.assert_allclose(list(r.ap.values()), list(base.ap.values()), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, method=methods, where=st.integers(0, 11))
def test_false_positive_below_all_true_positives_never_raises_ap(seed, method, where):
    rng = np.random.default_rng(seed)
    images = random_images(rng, n_images=12, num_classes=2)
    before = build(images, num_classes=2, ap_method=method).compute()
    i, gb, gl, gd, db, ds, dl = images[where]
    low = min((im[5].min() for im in images if im[5].size), default=1.0) - 1.0
    images[where] = (i, gb, gl, gd, np.vstack([db, [[500, 500, 510, 510]]]), np.append(ds, low), np.append(dl, 1))
    after = build(images, num_classes=2, ap_method=method).compute()
    for k in before.ap:
        if not np.isnan(before.ap[k]):
            assert after.ap[k] <= before.ap[k] + 1e-12


@settings(max_examples=30, deadline=None)
@given(seed=seeds, method=methods, n_shards=st.integers(1, 4))
def test_sharded_then_merged_equals_single_pass(seed, method, n_shards):
    rng = np.random.default_rng(seed)
    images = random_images(rng, n_images=15, num_classes=3, tie_decimals=1)
    single = build(images, num_classes=3, ap_method=method)
    cuts = np.sort(rng.integers(0, 16, size=n_shards - 1))
    shards = [build(part, num_classes=3, ap_method=method) for part in np.split(np.arange(15), cuts)
              for part in [[images[j] for j in part]]]
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    a, b = single.compute(), merged.compute()
    assert list(a.ap.values()) == pytest.approx(list(b.ap.values()), nan_ok=True, abs=0)
    assert merged.stats().image_ids == single.stats().image_ids
    np.testing.assert_array_equal(merged.stats().n_pos, single.stats().n_pos)


def test_reset_clears_state():
    m = one_class()
    m.update("i", [[0, 0, 1, 1]], [0], None, E, [], EL)
    m.reset()
    assert m.compute().n_images == 0 and np.isnan(m.compute().map)
