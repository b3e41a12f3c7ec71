"""Write the report files: ``index.html`` and ``<suite>/layers.csv``, each atomically.

Atomic (temp file in the same directory, then ``os.replace``) because reports are often served or
opened while a run rewrites them: a reader sees the old file or the new one, never half of one.
Suite names are arbitrary text, so the CSV directory is the name itself only when that is a plain,
safe file name; otherwise a slug of it, so no name can write outside ``out_dir``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.report.layers_csv import layers_csv_text
from harness.report.load import load_results, validate_results
from harness.report.page import render_html

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file next to it and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read (served, shared)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def suite_dirnames(suites: Sequence[Mapping[str, Any]]) -> list[str]:
    """One directory name per suite: the name when safe and unique, else ``suite-<i>-<slug>``."""
    names: list[str] = []
    for i, suite in enumerate(suites):
        name = str(suite.get("name"))
        if not _SAFE_NAME.fullmatch(name) or name.lower() in {n.lower() for n in names}:
            text = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:40]
            name = f"suite-{i}-{text}" if text else f"suite-{i}"
        names.append(name)
    return names


def write_report(results: Mapping[str, Any] | str | Path, out_dir: str | Path) -> Path:
    """Render ``results`` (a dict, or a results.json path) into ``out_dir``; return the index.html path.

    Writes ``out_dir/<suite>/layers.csv`` for every suite (header only when no layers were compared)
    before ``index.html``, so the page never links to a CSV that is not there yet.
    """
    data = load_results(results) if isinstance(results, (str, Path)) else validate_results(results)
    out = Path(out_dir)
    suites = data["suites"]
    dirs = suite_dirnames(suites)
    for suite, d in zip(suites, dirs):
        layers = [r for r in suite.get("layers") or [] if isinstance(r, Mapping)]
        atomic_write_text(out / d / "layers.csv", layers_csv_text(layers))
    index = out / "index.html"
    atomic_write_text(index, render_html(data, csv_hrefs=[f"{d}/layers.csv" for d in dirs]))
    return index
