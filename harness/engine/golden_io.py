"""Where a suite's golden lives and its life cycle: verify, or write when missing / asked to update.

A missing golden is written and the checks that need it fail ("run again to confirm"), and
``--golden-update`` rewrites it and still fails, so a golden is never accepted by the run that made it
(pytest-regressions' rule). Writes go through :class:`~harness.golden.GoldenWriter` (temp dir + rename)
under an exclusive file lock, so two pytest-xdist workers cannot interleave two writes of one golden.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.golden.store import GoldenStore
from harness.suite import Suite

GoldenState = str  # "verified" | "written" | "updated" | "absent"


def default_golden_root(suite: Suite) -> Path:
    """``golden/`` beside the ``suites/`` folder a suite file sits in, else beside the suite file."""
    folder = suite.path.parent
    return (folder.parent if folder.name == "suites" else folder) / "golden"


def golden_dir(suite: Suite, golden_root: Path | None = None) -> Path:
    return (golden_root or default_golden_root(suite)) / suite.name


@contextlib.contextmanager
def golden_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``<golden>/../.<name>.lock`` (no-op where fcntl is unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class GoldenHandle:
    """The golden a run compares against (``store``), and what this run did to it (``state``)."""

    path: Path
    state: GoldenState
    store: GoldenStore | None

    @property
    def fresh(self) -> bool:
        """Written or rewritten by this run: checks against it must fail until a second run confirms."""
        return self.state in ("written", "updated")


def exists(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path.exists() and any(path.iterdir()))


def relative_to_cwd(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # pragma: no cover - other drive on Windows
        return str(path)
