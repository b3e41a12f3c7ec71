"""The checks of a suite (one pytest item each): stages in, verdicts and report sections out.

Each function reads the stages it needs from :class:`~harness.engine.stages.SuiteStages` and turns them
into :class:`~harness.gates.Verdict` objects through the suite's ``[gates]``; none of them prints. A
:class:`~harness.errors.HarnessError` while computing (a corrupt golden, a missing image) becomes the
check's ``error``: the item fails with that message and nothing is overwritten.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from harness.compare.stats import BmrtResult, bmrt_allclose, tensor_stats
from harness.engine.attribution import layer_nodes
from harness.engine.baseline import golden_metric_verdicts
from harness.engine.finite import finite
from harness.engine.golden_io import GoldenHandle, relative_to_cwd
from harness.engine.layers import sample_layer
from harness.engine.parity import diagnose
from harness.engine.remedy import divergence_record, divergence_remedy
from harness.engine.results import CheckResult
from harness.engine.stages import SuiteStages, stack
from harness.errors import GoldenMissingError, HarnessError
from harness.golden.store import GoldenStore
from harness.golden.weights import WEIGHTS_FILE, WeightChanges, compare_weights, weight_records, weights_from_json
from harness.gates import (LAYER_METRICS, Bound, Verdict, check_drop, check_layers, check_max, check_min,
                           layer_key, remedy_for)
from harness.leakage import find_leakage

log = logging.getLogger(__name__)
_FP16_HALF_ULP = 2.0 ** -11  # relative rounding of a float16 dump
_HIST_LAYERS = 4
_HIST_BINS = 64


def _fresh_verdict(stages: SuiteStages, check: str, g: GoldenHandle) -> Verdict:
    what = "was missing and has been written" if g.state == "written" else "has been rewritten (--golden-update)"
    return Verdict(check=check, gate="golden", passed=False, observed=float("nan"), bound=float("nan"), op="<=",
                   source="harness: a golden is only trusted after a second run confirms it", least_passing=None,
                   message=f"{check}: golden {relative_to_cwd(g.path)} {what}; this run cannot confirm it",
                   remedy=f"run again to confirm, then commit {relative_to_cwd(g.path)}", subject=None)


def _start(stages: SuiteStages, item: str, g: GoldenHandle) -> CheckResult:
    """A golden check's result, already failed with "run again to confirm" when ``g`` was written this run."""
    result = CheckResult(item, sections=_golden_sections(stages, g))
    if g.fresh:
        result.verdicts.append(_fresh_verdict(stages, item, g))
    return result


def _golden_sections(stages: SuiteStages, g: GoldenHandle | None = None) -> dict[str, Any]:
    own = stages.golden
    out = {"golden": {"path": relative_to_cwd(own.path), "state": own.state}}
    if g is not None and g.path != own.path:
        out["golden"]["fp32_dumps"] = relative_to_cwd(g.path)
    return out


# --- leakage --------------------------------------------------------------------------------------
def leakage(stages: SuiteStages) -> CheckResult:
    data = stages.data
    bound = stages.suite.gates.bound("calibration_overlap_max")
    report = find_leakage(data.calibration, [s.image_path for s in data.evaluation])
    return CheckResult("leakage", [report.as_verdict(bound=bound)] if bound is not None else [])


# --- input parity ---------------------------------------------------------------------------------
def input_parity(stages: SuiteStages) -> CheckResult:
    g = stages.fp32_golden
    result = _start(stages, "input-parity", g)
    if g.fresh:
        return result
    store = g.store
    golden = store.read_tensor(store.names("input")[0], section="input")
    ours = stages.probe.inputs
    n = min(len(golden), len(ours))
    bound = stages.suite.gates.bound("input_parity_max_abs")
    found = diagnose(ours[:n], golden[:n], tolerance=bound.value)
    verdict = check_max("input_parity_max_abs", found.max_abs, bound, check="input-parity",
                        subject=stages.input_name)
    if not verdict.passed:
        verdict = _with_message(verdict, f"{verdict.message}; diagnosis: {found.diagnosis}",
                                "fix [preprocess] as the diagnosis says (the golden input is what the deployed "
                                "pipeline feeds); if the change is intended, rerun with --golden-update")
    result.verdicts.append(verdict)
    return result


def _with_message(v: Verdict, message: str, remedy: str) -> Verdict:
    return replace(v, message=message, remedy=remedy)


# --- fp32 vs golden -------------------------------------------------------------------------------
def fp32_golden(stages: SuiteStages) -> CheckResult:
    g = stages.fp32_golden
    result = _start(stages, "fp32-golden", g)
    if g.fresh:
        return result
    store, probe, gates = g.store, stages.probe, stages.suite.gates
    cos_bound, abs_bound = gates.bound("fp32_golden_cosine_min"), gates.bound("fp32_golden_max_abs")
    changed = store.manifest.model_sha256 not in (None, stages.model.sha256)
    note = " (the model file changed since the golden was written)" if changed else ""
    weights = _weight_changes(stages, store)
    # The layer verdict first: when the model changed, its first line names where (outputs only say that).
    layers = _layers_vs_golden(stages, store, abs_bound, cos_bound, note, weights)
    if weights is not None:
        result.verdicts.append(_weights_verdict(store, weights, layers))
    result.verdicts.append(layers)
    for name in store.names("output"):
        if name not in probe.outputs:
            result.verdicts.append(_missing(name, "output", note))
            continue
        ref = store.read_tensor(name, section="output")
        cur = stack(probe.outputs[name])
        stats = tensor_stats(ref[: len(cur)], cur[: len(ref)])
        result.verdicts += [check_min("fp32_golden_cosine_min", stats.cosine, cos_bound, subject=name),
                            check_max("fp32_golden_max_abs", stats.max_abs_error, abs_bound, subject=name)]
    return result


def _weight_changes(stages: SuiteStages, store: GoldenStore) -> WeightChanges | None:
    """The model's weights against the golden's hashes; None when the golden has none (written before they were
    recorded, or imported from dumps)."""
    if store.manifest.file_entry(WEIGHTS_FILE) is None:
        return None
    recorded = weights_from_json(store.read_json(WEIGHTS_FILE))
    return None if recorded is None else compare_weights(recorded, weight_records(stages.model.proto))


def _weights_verdict(store: GoldenStore, weights: WeightChanges, layers: Verdict) -> Verdict:
    """Weights first: a changed kernel is the cause, the first differing tensor only where it shows."""
    n = len(weights.changed) + len(weights.added) + len(weights.removed)
    source = f"harness: the fp32 golden's weight hashes ({WEIGHTS_FILE})"
    if not weights:
        return Verdict(check="fp32-golden", gate="weights", passed=True, observed=0.0, bound=0.0, op="<=",
                       source=source, least_passing=0.0, message=f"fp32-golden passed: {weights.describe()}",
                       remedy="nothing to do", subject=None, details={"n_weights": weights.n_golden})
    when = f" of {store.manifest.created}" if store.manifest.created else ""
    if layers.passed or "tensor" not in layers.details:
        then = "no layer differs beyond the fp32-golden bounds"
    else:
        d = layers.details
        then = f"first differing tensor {d['tensor']!r} of {d['node']} ({d['node_op']})"
        if d["node"] in weights.nodes():
            then += ", the node whose weights changed"
        elif d.get("edited"):
            then += f", in one layer with the changed {d['edited']}"
    nodes = sorted(weights.nodes())
    first = weights.changed[0] if weights.changed else (weights.added or weights.removed)[0]
    return Verdict(check="fp32-golden", gate="weights", passed=False, observed=float(n), bound=0.0, op="<=",
                   source=source, least_passing=None,
                   message=f"fp32-golden FAILED: {weights.describe()} ({n} of {weights.n_golden} weights differ "
                           f"from the golden{when}); {then}",
                   remedy=f"the fp32 model's weights changed at {', '.join(nodes[:3]) or first.name}: if intended, "
                          "rerun with --golden-update and commit",
                   subject=first.name, details={"n_changed": len(weights.changed), "n_added": len(weights.added),
                                                "n_removed": len(weights.removed), "n_weights": weights.n_golden})


def _missing(name: str, section: str, note: str) -> Verdict:
    return Verdict(check="fp32-golden", gate="tensors", passed=False, observed=float("nan"), bound=float("nan"),
                   op="<=", source="harness: the golden and the model must have the same tensors",
                   least_passing=None, message=f"fp32-golden FAILED: golden {section} {name!r} is not produced by "
                   f"the model any more{note}", remedy="the model changed; if intended, rerun with --golden-update",
                   subject=name)


def _layers_vs_golden(stages: SuiteStages, store: GoldenStore, abs_bound: Bound, cos_bound: Bound,
                      note: str, weights: WeightChanges | None = None) -> Verdict:
    """One verdict for all layers: the first tensor (topological order) that differs beyond the bound plus
    the dump's own rounding (float16: half an ulp, 2^-11 relative)."""
    probe = stages.probe
    infos = {t.name: t for t in stages.layers}
    worst_excess, n_failed, first = -math.inf, 0, None
    names = store.names("layers")
    limit = store.manifest.extra.get("layer_sample_limit")  # the golden kept a sample of each layer
    for name in names:
        if name not in probe.layers:
            return _missing(name, "layer", note)
        entry = store.entry(name, section="layers")
        ref = store.read_tensor(name, section="layers").astype(np.float64)
        cur = sample_layer(stack(probe.layers[name]), limit)[: len(ref)].astype(np.float64)
        ref = ref[: len(cur)]
        allowance = _FP16_HALF_ULP * np.abs(ref) if entry.dtype == "float16" else 0.0
        excess = float(np.max(np.abs(cur - ref) - allowance)) if ref.size else 0.0
        cosine = tensor_stats(ref, cur).cosine
        bad = excess > abs_bound.value or not cosine >= cos_bound.value
        worst_excess = max(worst_excess, excess)
        if bad:
            n_failed += 1
            first = first or (name, excess, cosine)
    if first is None:
        return Verdict(check="fp32-golden", gate="fp32_golden_max_abs", passed=True, observed=worst_excess,
                       bound=abs_bound.value, op="<=", source=abs_bound.source, least_passing=worst_excess,
                       message=f"fp32-golden passed: {len(names)} layers within {abs_bound.value:g} of the golden "
                               f"(beyond float16 dump rounding); largest excess {worst_excess:.3g}",
                       remedy="nothing to do", subject=None, details={"n_layers": len(names)})
    name, excess, cosine = first
    info = infos.get(name)
    where = f"{info.node_name} ({info.op_type}) -> tensor {name!r}" if info else repr(name)
    # The nodes of the model as given behind this layer: a Clip's layer also holds the Conv (and the BatchNorm
    # folded into it) before it, and that Conv is what to name when its weights changed.
    behind = layer_nodes(stages.model.proto, name, infos)
    edited = behind.changed(weights.nodes()) if weights else ()
    if behind.describe():
        where += f" [one layer: {behind.describe()}]"
    if edited:
        where += f", whose weights changed at {', '.join(f'{op} {n}' for n, op in edited)}"
    at = edited[0][0] if edited else info.node_name if info else name
    # Only worth saying when the model did change: with the same file the weights are the golden's anyway.
    predates = ("; the golden predates weight hashes; rerun with --golden-update to record them"
                if weights is None and store.manifest.model_sha256 != stages.model.sha256 else "")
    return Verdict(check="fp32-golden", gate="fp32_golden_max_abs", passed=False, observed=excess,
                   bound=abs_bound.value, op="<=", source=abs_bound.source, least_passing=worst_excess,
                   message=f"fp32-golden FAILED: first differing layer {where}: max abs error {excess:.4g} beyond "
                           f"dump rounding (bound {abs_bound.value:g}), cosine {cosine:.6f}; {n_failed} of "
                           f"{len(names)} layers differ{note}{predates}",
                   remedy=f"the fp32 model changed at {at} (weights, runtime or preprocessing); if intended, rerun "
                          "with --golden-update and commit",
                   subject=name, details={"n_failed": n_failed, "n_layers": len(names), "tensor": name,
                                          "node": info.node_name if info else name,
                                          "node_op": info.op_type if info else "",
                                          "edited": ", ".join(f"{op} {n}" for n, op in edited)})


# --- layerwise ------------------------------------------------------------------------------------
def layerwise(stages: SuiteStages) -> CheckResult:
    """Every measured tensor against the suite's one bound table; one first-divergent answer for the verdict,
    results.json and the report."""
    run = stages.quant_probe
    result = run.layerwise
    divergence = result.first_divergent_layer()
    first, remedy, text = None, None, None
    if divergence is not None:
        remedy = divergence_remedy(stages.profile, divergence)
        text = divergence.describe()
        first = divergence_record(divergence, remedy)
    report = check_layers([r.verdict for r in result.rows if r.verdict is not None], first_divergent=text,
                          remedy=remedy)
    layer_rows = []
    for row, rec in zip(result.rows, result.to_records()):
        tol = row.verdict.tolerance if row.verdict is not None else None
        bounds = {} if tol is None or tol.skip else tol.values()
        layer_rows.append({**{k: rec[k] for k in ("index", "name", "node_name", "op_type")},
                           **{k: rec[k] for k in rec if k.startswith(("acc_", "local_")) and "nonfinite" not in k
                              and "nmse" not in k},
                           **{layer_key(m): bounds.get(m) for m in LAYER_METRICS},
                           "skipped": bool(tol is not None and tol.skip),
                           "passed": row.passed, "failures": rec["failures"]})
    sections = {"layers": layer_rows, "first_divergent": first, "histograms": _histograms(stages, result.rows),
                "timing_s": dict(stages.timing)}
    return CheckResult("layerwise", [report.summary], sections=sections)


def _histograms(stages: SuiteStages, rows: list[Any]) -> list[dict[str, Any]]:
    scored = [r for r in rows if r.accumulated is not None and math.isfinite(r.accumulated.cosine)]
    worst = sorted(scored, key=lambda r: r.accumulated.cosine)[:_HIST_LAYERS]
    ranges, symmetric = stages.quantized.ranges, stages.profile.activation_scheme.symmetric
    out = []
    for r in worst:
        values = stack(stages.probe.layers[r.name]).astype(np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        counts, edges = np.histogram(values, bins=_HIST_BINS)
        rng = ranges.get(r.name)
        clip = None
        if rng is not None:
            clip = [-rng.threshold, rng.threshold] if symmetric else [rng.lo, rng.hi]
        out.append({"tensor": r.name, "edges": edges.tolist(), "counts": counts.tolist(), "clip": clip,
                    "log_counts": True})
    return out


# --- outputs --------------------------------------------------------------------------------------
def outputs(stages: SuiteStages) -> CheckResult:
    probe, run, gates = stages.probe, stages.quant_probe, stages.suite.gates
    verdicts = []
    for name, values in probe.outputs.items():
        ref, sim = stack(values), stack(run.outputs[name])
        stats = tensor_stats(ref, sim)
        for key, value in (("output_cosine_min", stats.cosine), ("output_euclid_min", stats.euclid_similarity)):
            if gates.bound(key) is not None:
                verdicts.append(gates.check(key, value, subject=name))
        if gates.bound("output_bmrt_tol") is not None and _has_int8_kernels(stages):
            bm = bmrt_allclose(sim, stack(run.kernel_outputs[name]), tol=gates.bound("output_bmrt_tol").value)
            v = gates.check("output_bmrt_tol", bm.min_passing_tolerance, subject=name)
            verdicts.append(_bmrt_verdict(stages, v, bm, run.outputs[name]))
    return CheckResult("outputs", verdicts)


def _bmrt_verdict(stages: SuiteStages, v: Verdict, bm: BmrtResult, per_image: list[np.ndarray]) -> Verdict:
    """The bmrt verdict naming the element that set the maximum: its probe image, its flat index and
    coordinates in that image's output tensor, and both values (all probe images are compared at once)."""
    images = f"{len(per_image)} probe image{'s' * (len(per_image) != 1)}"
    if bm.worst_index is None or bm.worst_error == 0.0:
        return replace(v, message=f"{v.message}; simulate and int8-kernels agree exactly on {images}")
    size = per_image[0].size
    image, within = divmod(bm.worst_flat_index, size)
    coords = tuple(int(c) for c in np.unravel_index(within, per_image[0].shape))
    image_id = str(stages.data.probes[image].image_id)
    message = (f"{v.message}; simulate vs int8-kernels on {images} (bmrt_test's rule, relative error with "
               f"denominator >= {bm.floor:g}): worst element {within} {coords} on probe image "
               f"{image_id!r}: simulate {bm.worst_ref:.6g}, int8-kernels {bm.worst_test:.6g}, error "
               f"{bm.worst_error:.4g}; {bm.violations}/{bm.total} elements exceed {bm.tolerance:g}")
    remedy = v.remedy
    if bm.nonfinite:
        message += f"; {bm.nonfinite} elements are NaN/Inf"
        remedy = "NaN/Inf values, not int8 rounding: the suite's finite check names the first tensor that holds them"
    details = {"worst_image": image_id, "worst_element": within, "worst_coords": list(coords),
               "simulate": bm.worst_ref, "int8_kernels": bm.worst_test, "violations": bm.violations,
               "nonfinite": bm.nonfinite}
    return replace(v, message=message, remedy=remedy, details={**v.details, **details})


def _has_int8_kernels(stages: SuiteStages) -> bool:
    """bmrt compares the float simulation with onnxruntime's fused int8 kernels. Log-domain (NNIE) and 16-bit
    tensors are written as float fake-quant subgraphs with no integer kernel, so there the "kernel" run only
    re-associates float ops and flips values at rounding boundaries: the comparison would measure noise."""
    scheme = stages.profile.activation_scheme
    return scheme.domain == "uniform" and scheme.bits == 8


# --- metrics --------------------------------------------------------------------------------------
def metrics(stages: SuiteStages) -> CheckResult:
    """The fp32-vs-quantized drop gates, and both sides against the golden metrics.json (this suite's own golden,
    also with ``golden_from``: the fp32 dumps are shared, the metrics are the suite's)."""
    ev = stages.evaluation
    m = ev.metrics
    g = stages.golden
    result = _start(stages, "metrics", g)
    golden = None if g.fresh else _golden_metrics(stages, g)
    if golden is not None:
        result.verdicts += golden_metric_verdicts(
            golden, {"fp32": m.fp32, "quantized": m.quantized}, names=m.names,
            bound=stages.suite.gates.bound("metric_golden_max_abs"), manifest=g.store.manifest, suite=stages.suite,
            provenance_now=stages.metrics_provenance)
    for name, gate in stages.suite.gates.metrics.items():
        if name not in m.fp32:
            continue
        diff = m.difference[name]
        ci = (diff["ci_low"], diff["ci_high"]) if diff["ci_low"] is not None else None
        result.verdicts.append(check_drop(name, m.fp32[name], m.quantized[name], ci, gate))
    section = m.to_dict()
    if golden is not None:
        section["golden"] = {"fp32": golden.get("fp32"), "quantized": golden.get("quantized"),
                             "n_images": golden.get("n_images"), "created": g.store.manifest.created}
    result.sections.update(metrics=section, probes=ev.probes, timing_s=dict(stages.timing))
    return result


def _golden_metrics(stages: SuiteStages, g: GoldenHandle) -> dict[str, Any]:
    if g.store.manifest.file_entry("metrics.json") is None:
        raise GoldenMissingError(f"The golden {relative_to_cwd(g.path)} has no metrics.json (task metrics baseline)",
                                 expected="metrics.json, written with the golden of a detection or classification "
                                          "suite", remedy="rerun with --golden-update to record it, then run again")
    return dict(g.store.read_json("metrics.json"))


# --- calibration drift ----------------------------------------------------------------------------
def calibration_drift(stages: SuiteStages) -> CheckResult:
    result = _start(stages, "calibration-drift", stages.golden)
    if stages.golden.fresh:
        return result
    golden = stages.golden.store.read_json("calibration.json")["scales"]
    current = stages.scales
    bound = stages.suite.gates.bound("calibration_drift_max_rel")
    rows = []
    for key in sorted(set(golden) | set(current)):
        g, c = golden.get(key), current.get(key)
        if g is None or c is None:
            rows.append({"tensor": key, "golden": g and g["scale"][0], "current": c and c["scale"][0],
                         "rel_change": None})
            continue
        gs, cs = np.asarray(g["scale"], float), np.asarray(c["scale"], float)
        rel = float(np.max(np.abs(cs - gs) / np.maximum(np.abs(gs), 1e-30))) if gs.shape == cs.shape else math.inf
        rows.append({"tensor": key, "golden": float(gs.max()), "current": float(cs.max()), "rel_change": rel})
    rows.sort(key=lambda r: -math.inf if r["rel_change"] is None else -r["rel_change"])
    changed_sites = [r["tensor"] for r in rows if r["rel_change"] is None]
    result.sections["calibration_drift"] = rows
    if changed_sites:
        result.verdicts.append(Verdict(
            check="calibration-drift", gate="sites", passed=False, observed=float(len(changed_sites)), bound=0.0,
            op="<=", source="harness: the quantised tensors must be the golden's", least_passing=None,
            message=f"calibration-drift FAILED: {len(changed_sites)} quantised tensors differ from the golden's, "
                    f"e.g. {changed_sites[:3]}", remedy="the model or the profile changed; if intended, rerun with "
                    "--golden-update", subject=changed_sites[0]))
    worst = next((r for r in rows if r["rel_change"] is not None), None)
    if worst is not None and bound is not None:
        result.verdicts.append(check_max("calibration_drift_max_rel", worst["rel_change"], bound,
                                         subject=worst["tensor"]))
    return result


# --- reference model ------------------------------------------------------------------------------
def reference(stages: SuiteStages) -> CheckResult:
    """The model against its ``[model] reference`` in fp32 on the probe images: every layer both have (same
    tensor name and shape; Caffe blob names usually survive conversion) and the graph outputs. The first layer
    that differs is where a converter went wrong."""
    ref, probe, gates = stages.reference_probe, stages.probe, stages.suite.gates
    cos_bound, abs_bound = gates.bound("reference_cosine_min"), gates.bound("reference_max_abs")
    infos = {t.name: t for t in stages.layers}
    rows = []
    for name in ref.shared:
        stats = tensor_stats(stack(probe.layers[name]), stack(ref.values[name]))
        rows.append({"tensor": name, "max_abs": stats.max_abs_error, "cosine": stats.cosine,
                     "passed": stats.max_abs_error <= abs_bound.value and stats.cosine >= cos_bound.value})
    where = relative_to_cwd(ref.path)
    result = CheckResult("reference", sections={"reference": {"model": where, "shared_layers": len(rows),
                                                               "layers": len(stages.layers), "tensors": rows}})
    if not rows:
        result.verdicts.append(Verdict(
            check="reference", gate="reference_max_abs", passed=False, observed=float("nan"), bound=abs_bound.value,
            op="<=", source=abs_bound.source, least_passing=None,
            message=f"reference FAILED: {where} shares no tensor (name and shape) with the model",
            remedy="give the reference the same tensor names (a converter that keeps blob names), or compare the "
                   "two files' outputs with quant-harness compare", subject=None))
        return result
    failed = [r for r in rows if not r["passed"]]
    worst = max(rows, key=lambda r: r["max_abs"])
    if not failed:
        result.verdicts.append(Verdict(
            check="reference", gate="reference_max_abs", passed=True, observed=worst["max_abs"],
            bound=abs_bound.value, op="<=", source=abs_bound.source, least_passing=worst["max_abs"],
            message=f"reference passed: {len(rows)} shared tensors of {len(stages.layers)} agree with {where}; "
                    f"largest difference {worst['max_abs']:.3g} at {worst['tensor']!r}, lowest cosine "
                    f"{min(r['cosine'] for r in rows):.7f}", remedy="nothing to do", subject=worst["tensor"]))
        return result
    first = failed[0]
    info = infos.get(first["tensor"])
    at = f"{info.node_name} ({info.op_type}) -> tensor {first['tensor']!r}" if info else repr(first["tensor"])
    result.verdicts.append(Verdict(
        check="reference", gate="reference_max_abs", passed=False, observed=first["max_abs"], bound=abs_bound.value,
        op="<=", source=abs_bound.source, least_passing=worst["max_abs"],
        message=f"reference FAILED: first layer that differs from {where}: {at}, max abs difference "
                f"{first['max_abs']:.4g} (bound {abs_bound.value:g}), cosine {first['cosine']:.6f}; "
                f"{len(failed)} of {len(rows)} shared tensors differ",
        remedy=remedy_for("reference"),
        subject=first["tensor"], details={"n_failed": len(failed), "n_shared": len(rows)}))
    return result


CHECK_FUNCTIONS: dict[str, Callable[[SuiteStages], CheckResult]] = {
    "leakage": leakage, "input-parity": input_parity, "fp32-golden": fp32_golden, "layerwise": layerwise,
    "outputs": outputs, "metrics": metrics, "calibration-drift": calibration_drift, "reference": reference,
    "finite": finite,
}


def run_check(stages: SuiteStages, item: str) -> CheckResult:
    """Run one item; a HarnessError becomes the result's ``error`` (the item fails with its message), and so
    does any other exception (logged with its traceback): one crashing check never takes the run down."""
    try:
        return CHECK_FUNCTIONS[item](stages)
    except HarnessError as exc:
        return CheckResult(item, error=exc)
    except Exception as exc:  # noqa: BLE001 - a harness defect: reported as this check's error
        log.error("suite %s: check %s raised %s", stages.suite.name, item, type(exc).__name__, exc_info=True)
        return CheckResult(item, error=exc)
