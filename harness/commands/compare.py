"""``quant-harness compare A B``: per-tensor statistics between two sets of dumps, gated.

A and B may each be a golden directory, an ``.npz`` / ``.npy`` file from another tool (read with
``allow_pickle=False``; a pickled object array is refused), or a raw ``.dat`` read through
``--manifest`` (the section whose file name matches, else the one whose size matches).
A is the reference. Tensors are compared in A's order: for a golden that is inputs, then layers in
topological order, then outputs not already listed. Exit status: 0 every tensor passes, 1 some
tensor fails its tolerance (or cannot be compared: different sizes), 2 user error (raised as
``HarnessError``; the dispatcher prints it).

The table lists tensors topologically; when there are more than ``MAX_ROWS`` it shows the failing
tensors first (still in topological order), then passing ones, up to one screenful; ``--json``
prints everything.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.compare import ToleranceSet, parse_tolerance_spec, tensor_stats
from harness.compare.tolerance import BOUND_KEYS, LOWER_BOUNDS, ToleranceVerdict
from harness.errors import ConfigError
from harness.golden import MANIFEST_NAME, GoldenStore, Manifest

MAX_ROWS = 40


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("compare", help="compare two golden dirs / .npz / .dat dumps tensor by tensor",
                                   description=__doc__.splitlines()[0])
    parser.set_defaults(func=run)
    parser.add_argument("a", type=Path, help="reference: golden directory, .npz/.npy, or .dat with --manifest")
    parser.add_argument("b", type=Path, help="test: golden directory, .npz/.npy, or .dat with --manifest")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest.json (or its golden directory) describing a raw .dat argument")
    parser.add_argument("--tolerance", action="append", default=[], metavar="[GLOB:]KEY=VALUE",
                        help="cosine, euclid, sqnr_db (lower bounds), max_abs, mae, nmse (upper bounds) or "
                             "preset=NAME; repeatable (default: tpu-mlir tool default cosine/euclid 0.99/0.99)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@dataclass
class Source:
    """Ordered tensor names and a loader; arrays are read one at a time to keep memory flat."""

    label: str
    names: list[str]
    load: Callable[[str], np.ndarray]


def open_source(path: Path, *, manifest: Path | None) -> Source:
    if path.is_dir():
        store = GoldenStore.open(path)
        names = list(dict.fromkeys(store.names("input") + store.names("layers") + store.names("output")))
        return Source(str(path), names, lambda n: store.read_tensor(n))
    if not path.is_file():
        raise ConfigError(f"{path} does not exist", expected="a golden directory, .npz, .npy or .dat file")
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle: refuse rather than execute code
            raise ConfigError(f"{path} cannot be read without pickle ({exc})",
                              expected="numeric arrays saved with np.savez / np.save",
                              remedy="re-save the arrays as plain numeric numpy arrays") from None
        except OSError as exc:
            raise ConfigError(f"{path} is not a numpy file ({exc})", expected="an .npz / .npy file") from None
        if suffix == ".npy":
            return Source(str(path), [path.stem], lambda n: loaded)

        def load_member(name: str) -> np.ndarray:
            try:
                return loaded[name]  # .npz members are read lazily: the pickle check happens here
            except ValueError as exc:
                raise ConfigError(f"{path}[{name!r}] cannot be read without pickle ({exc})",
                                  expected="numeric arrays saved with np.savez",
                                  remedy="re-save the arrays as plain numeric numpy arrays") from None

        return Source(str(path), list(loaded.files), load_member)
    if suffix == ".dat":
        return _dat_source(path, manifest)
    raise ConfigError(f"Cannot tell what {path} is", expected="a golden directory, .npz, .npy or .dat (with --manifest)")


def _dat_source(path: Path, manifest_path: Path | None) -> Source:
    if manifest_path is None:
        raise ConfigError(f"{path} is a raw .dat file without shapes", expected="--manifest manifest.json",
                          remedy="pass --manifest pointing at the golden that describes the layout")
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ConfigError(f"--manifest {manifest_path} does not exist", expected="a golden's manifest.json")
    manifest = Manifest.read(manifest_path)
    size = path.stat().st_size
    by_name = [f for f in manifest.files if f.name == path.name]
    by_size = [f for f in manifest.files if f.nbytes == size and f.name.endswith(".dat")]
    chosen = by_name or (by_size if len(by_size) == 1 else [])
    if not chosen:
        raise ConfigError(f"Cannot match {path} ({size} bytes) to a file of {manifest_path}",
                          expected=f"the name or size of one of {[(f.name, f.nbytes) for f in manifest.files]}",
                          remedy="rename the .dat to the golden's file name (e.g. output_ref_data.dat)")
    if chosen[0].nbytes != size:
        raise ConfigError(f"{path} has {size} bytes; {chosen[0].name} in the manifest has {chosen[0].nbytes}",
                          expected="a dump of the same model, batch and dtype")
    entries = {t.name: t for t in manifest.tensors if t.file == chosen[0].name}

    def load(name: str) -> np.ndarray:
        t = entries[name]
        return np.fromfile(path, dtype=t.np_dtype, count=int(np.prod(t.shape)), offset=t.offset).reshape(t.shape)

    return Source(str(path), list(entries), load)


def run(args: argparse.Namespace) -> int:
    tolerances = parse_tolerance_spec(args.tolerance) if args.tolerance else ToleranceSet()
    a = open_source(args.a, manifest=args.manifest)
    b = open_source(args.b, manifest=args.manifest)
    in_b = set(b.names)
    common = [n for n in a.names if n in in_b]
    if not common:
        raise ConfigError(f"{a.label} and {b.label} have no tensor name in common",
                          expected="dumps of the same model", remedy="check the tensor names (e.g. with --json)")
    verdicts: list[ToleranceVerdict] = []
    notes: dict[str, str] = {}
    for name in common:
        x, y = a.load(name), b.load(name)
        if x.size != y.size:
            notes[name] = f"size {x.shape} vs {y.shape}"
            continue
        if x.shape != y.shape:
            notes[name] = f"shape {x.shape} vs {y.shape}, compared flattened"
        verdicts.append(tolerances.check(name, tensor_stats(x, y)))
    size_fail = [n for n, note in notes.items() if note.startswith("size")]
    passed = not any(not v.passed for v in verdicts) and not size_fail
    extra = {"only_in_a": [n for n in a.names if n not in in_b], "only_in_b": [n for n in b.names if n not in set(a.names)]}
    if args.json:
        print(json.dumps(_jsonable(_report(verdicts, notes, passed, tolerances, extra)), indent=1))
    else:
        print(_table(verdicts, notes, tolerances, extra))
    return 0 if passed else 1


def _report(verdicts: list[ToleranceVerdict], notes: dict[str, str], passed: bool, tolerances: ToleranceSet,
            extra: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "passed": passed,
        "default_tolerance": {**tolerances.default.values(), "source": tolerances.default.source},
        "tensors": [{"name": v.name, "passed": v.passed, "failures": [str(f) for f in v.failures], "note": notes.get(v.name, ""),
                     "min_passing": dict(v.min_passing), **v.stats.to_dict()} for v in verdicts],
        "not_compared": {n: note for n, note in notes.items() if note.startswith("size")},
        **extra,
    }


def _table(verdicts: list[ToleranceVerdict], notes: dict[str, str], tolerances: ToleranceSet,
           extra: dict[str, list[str]]) -> str:
    rows = verdicts if len(verdicts) <= MAX_ROWS else (
        [v for v in verdicts if not v.passed] + [v for v in verdicts if v.passed])[:MAX_ROWS]
    width = min(max([len(v.name) for v in rows] + [6]), 48)
    lines = [f"{'tensor':<{width}}  {'cosine':>9}  {'euclid':>9}  {'sqnr_db':>8}  {'max_abs':>10}  status"]
    for v in rows:
        s = v.stats
        status = "ok" if v.passed else "FAIL " + "; ".join(str(f) for f in v.failures)
        if v.name in notes:
            status += f" ({notes[v.name]})"
        lines.append(f"{v.name[-width:]:<{width}}  {s.cosine:>9.6f}  {s.euclid_similarity:>9.6f}  {s.sqnr_db:>8.2f}  "
                     f"{s.max_abs_error:>10.4g}  {status}")
    if len(verdicts) > len(rows):
        lines.append(f"... {len(verdicts) - len(rows)} more passing tensor(s); use --json for all")
    for name, note in notes.items():
        if note.startswith("size"):
            lines.append(f"{name}: FAIL not comparable, {note}")
    n_fail = sum(not v.passed for v in verdicts) + sum(n.startswith("size") for n in notes.values())
    lines.append(f"{len(verdicts)} tensor(s) compared, {n_fail} failed; default tolerance {tolerances.default.describe()}")
    if verdicts:
        needed = []
        for key in BOUND_KEYS:  # Polygraphy: the tolerance that would have passed every tensor
            seen = [v.min_passing[key] for v in verdicts if key in v.min_passing]
            if seen:
                lower = key in LOWER_BOUNDS
                needed.append(f"{key} {'>=' if lower else '<='} {(min(seen) if lower else max(seen)):.6g}")
        if needed:
            lines.append("would pass with: " + ", ".join(needed))
    for key, names in extra.items():
        if names:
            lines.append(f"{key.replace('_', ' ')}: {len(names)} tensor(s), e.g. {names[:3]}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """Strict JSON: inf/nan become strings ("inf", "-inf", "nan")."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
