"""The golden ``metrics.json`` as a baseline: a task metric that moved since the golden is a regression.

The fp32-vs-int8 drop gate compares two numbers of one run, so a change that moves both alike (a stricter
score threshold in post-processing, a resize that drifted) passes it: measured on the bundled detector, a
score threshold of 0.6 instead of 0.01 took fp32 mAP from 0.8164 to 0.5872 and int8 from 0.8116 to 0.5868,
and every check passed. So the metrics check also holds both sides against the golden's values.

The pipeline is deterministic (fixed images, decoder, calibration and bootstrap seed; onnxruntime's CPU
kernels gave bit-identical outputs with 1 and 2 threads on the bundled detector, and the same mAP to the last
bit), so the run-to-run noise is zero and the default bound is a tiny absolute epsilon
(``metric_golden_max_abs``). To say *what* changed, the golden records (``provenance`` in metrics.json) the
model's sha256, one sha256 per suite section that can move a metric, and one of the evaluation data (image
ids, file sizes and labels). Goldens written before that still compare values; what they cannot tell is said.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.data import Sample
from harness.gates import Bound, Verdict
from harness.golden.manifest import Manifest, current_versions
from harness.suite import Suite
from harness.suite_schema import portable_path, resolve_path

#: The suite sections whose change can move a task metric (``[gates]`` only judges, ``[suite]`` only names).
SECTIONS: tuple[str, ...] = ("preprocess", "postprocess", "quant", "data", "metrics")
GATE = "metric_golden_max_abs"
SIDES: tuple[str, ...] = ("fp32", "quantized")


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _unexpand(obj: Any, prefixes: Sequence[tuple[str, str]]) -> Any:
    """Paths under a ``${NAME}`` folder written back as ``${NAME}/...``: the same suite in two checkouts (or with
    the real models in another place) must hash the same."""
    if isinstance(obj, str):
        for written, var in prefixes:
            if obj == written or obj.startswith(written + "/"):
                return "${" + var + "}" + obj[len(written):]
        return obj
    if isinstance(obj, Mapping):
        return {k: _unexpand(v, prefixes) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unexpand(v, prefixes) for v in obj]
    return obj


def section_hashes(suite: Suite) -> dict[str, str]:
    """sha256 of each section in :data:`SECTIONS` as :meth:`Suite.to_dict` writes it (defaults included, so a
    changed default shows too); sections a suite has not got (``layers`` suites) are left out."""
    base = suite.base_dir
    prefixes = [(portable_path(resolve_path("${" + v + "}", base), base), v) for v in suite.variables
                if os.environ.get(v)]
    data = suite.to_dict()
    return {s: _sha256_json(_unexpand(data[s], prefixes)) for s in SECTIONS if s in data}


def _target_digest(target: Any) -> Any:
    if target is None or isinstance(target, (int, str)):
        return target
    return [hashlib.sha256(getattr(target, f).tobytes()).hexdigest()[:16]
            for f in ("boxes", "labels", "difficult", "crowd") if hasattr(target, f)]


def data_fingerprint(samples: Sequence[Sample[Any]]) -> dict[str, Any]:
    """The evaluation list: image ids (as the list or dataset names them), file sizes and labels, in order."""
    rows = []
    for s in samples:
        try:
            size = Path(s.image_path).stat().st_size
        except OSError:
            size = None
        rows.append([s.image_id, size, _target_digest(s.target)])
    return {"n_images": len(samples), "sha256": _sha256_json(rows)}


def provenance(suite: Suite, *, model_sha256: str, samples: Sequence[Sample[Any]]) -> dict[str, Any]:
    """What ``metrics.json`` records beside the values, to tell later what changed."""
    return {"model_sha256": model_sha256, "sections": section_hashes(suite), "data": data_fingerprint(samples)}


def what_changed(golden: Mapping[str, Any] | None, current: Mapping[str, Any], manifest: Manifest,
                 suite: Suite) -> tuple[list[str], list[str], list[str]]:
    """(changed, unchanged, could not tell) since the golden, as short phrases. ``golden`` is its recorded
    provenance (None: written before provenance was recorded; the manifest then still knows the model and
    the preprocessing)."""
    changed: list[str] = []
    same: list[str] = []
    unknown: list[str] = []
    recorded_model = (golden or {}).get("model_sha256") or manifest.model_sha256
    if recorded_model is None:
        unknown.append("model")
    else:
        (same if recorded_model == current["model_sha256"] else changed).append("model")
    sections = (golden or {}).get("sections")
    for s in current["sections"]:
        if isinstance(sections, Mapping) and s in sections:
            (same if sections[s] == current["sections"][s] else changed).append(f"[{s}]")
        elif s == "preprocess" and manifest.preprocessing:
            (same if manifest.preprocessing == suite.preprocess.to_dict() else changed).append("[preprocess]")
        else:
            unknown.append(f"[{s}]")
    data = (golden or {}).get("data")
    if isinstance(data, Mapping) and "sha256" in data:
        if data.get("n_images") != current["data"]["n_images"]:
            changed.append(f"evaluation data ({data.get('n_images')} -> {current['data']['n_images']} images)")
        elif data["sha256"] != current["data"]["sha256"]:
            changed.append("evaluation data (image names, file sizes or labels)")
        else:
            same.append("evaluation data")
    else:
        unknown.append("evaluation data")
    versions = current_versions()
    moved = [f"{k} {v} -> {versions[k]}" for k, v in sorted(manifest.versions.items())
             if k in versions and versions[k] != v]
    changed += moved
    return changed, same, unknown


def _date(manifest: Manifest) -> str:
    return f"the golden of {manifest.created}" if manifest.created else "the golden (date not recorded)"


def _equal(a: float, b: float, bound: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= bound


def golden_metric_verdicts(golden: Mapping[str, Any], current: Mapping[str, Mapping[str, float]], *,
                           names: Sequence[str], bound: Bound, manifest: Manifest, suite: Suite,
                           provenance_now: Mapping[str, Any]) -> list[Verdict]:
    """One verdict (check ``metric-golden``) per side, fp32 and quantized: every metric both the golden and this
    run have must be within ``bound`` of the golden's value. ``names`` orders them (headline first)."""
    changed, same, unknown = what_changed(golden.get("provenance"), provenance_now, manifest, suite)
    out = []
    for side in SIDES:
        then = {k: float(v) for k, v in (golden.get(side) or {}).items() if isinstance(v, (int, float))}
        now = {k: float(v) for k, v in current[side].items()}
        compared = list(dict.fromkeys(n for n in (*names, *now) if n in now and n in then))
        moved = [n for n in compared if not _equal(then[n], now[n], bound.value)]
        # observed: the largest move (inf when one side is undefined and the other is not)
        worst = max((abs(now[n] - then[n]) if math.isnan(now[n]) == math.isnan(then[n]) else math.inf
                     for n in compared), default=0.0)
        worst = 0.0 if math.isnan(worst) else worst
        gone = [n for n in then if n not in now]
        notes = f"; not compared: {', '.join(gone)} (in the golden, not computed now)" if gone else ""
        common = dict(check="metric-golden", gate=GATE, observed=worst, bound=bound.value, op="<=",
                      source=bound.source, least_passing=worst)
        if not moved:
            message = (f"metric-golden passed: {side} {', '.join(compared) or '(no metric)'} within "
                       f"{bound.value:g} of {_date(manifest)} ({bound.source}){notes}")
            out.append(Verdict(**common, passed=True, message=message, remedy="nothing to do",
                               subject=f"{side} {compared[0]}" if compared else side,
                               details={"side": side, "n_compared": len(compared)}))
            continue
        first = moved[0]
        also = "".join(f"; {side} {n} moved from {then[n]:.4f} to {now[n]:.4f}" for n in moved[1:4])
        message = (f"metric-golden FAILED: {side} {first} moved from golden {then[first]:.4f} to {now[first]:.4f} "
                   f"(change {now[first] - then[first]:+.4g}, allowed {bound.value:g}: {bound.source}){also}; "
                   f"{_context(manifest, changed, same, unknown)}{notes}")
        out.append(Verdict(**common, passed=False, message=message, remedy=_remedy(changed, unknown),
                           subject=f"{side} {first}", details={"side": side, "golden": then[first],
                                                               "current": now[first], "n_moved": len(moved),
                                                               "n_compared": len(compared)}))
    return out


def _context(manifest: Manifest, changed: list[str], same: list[str], unknown: list[str]) -> str:
    parts = [f"since {_date(manifest)}:"]
    if changed:
        parts.append(f"changed {', '.join(changed)}" + (f" (unchanged: {', '.join(same)})" if same else ""))
    elif unknown:
        parts.append(f"unchanged {', '.join(same)}" if same else "nothing recorded")
    else:
        parts.append(f"nothing it records changed ({', '.join(same)})")
    text = " ".join(parts)
    if unknown:
        text += (f"; cannot tell whether {', '.join(unknown)} changed (the golden predates their hashes; rerun "
                 "with --golden-update to record them)")
    return text


def _remedy(changed: list[str], unknown: list[str]) -> str:
    if changed:
        return (f"{', '.join(changed)} changed since the golden: revert the change, or if the new metrics are "
                "intended, rerun with --golden-update and commit the golden")
    if unknown:
        return (f"check whether {', '.join(unknown)} or the harness code changed; if the new metrics are intended, "
                "rerun with --golden-update (that also records the hashes that tell next time)")
    return ("nothing the golden records changed, so code did (the harness's post-processing or metrics, or a "
            "dependency): find the change, or if the new metrics are intended rerun with --golden-update")
