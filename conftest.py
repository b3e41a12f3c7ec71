"""Repo-level fixtures: where the bundled suites and the real third-party models are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests/test_plugin.py drives the suite plugin in throw-away projects

REPO_ROOT = Path(__file__).resolve().parent
REALMODELS_ENV = "QUANT_HARNESS_REALMODELS"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def suites_dir() -> Path:
    return REPO_ROOT / "suites"


@pytest.fixture(scope="session")
def realmodels_dir() -> Path:
    """``../shared/realmodels`` as named by ``$QUANT_HARNESS_REALMODELS``; skips when unset.

    ``.ci/run`` always sets it, so these tests never skip in CI. A set-but-wrong path is an error,
    not a skip: a typo must not silently turn the acceptance tests off.
    """
    value = os.environ.get(REALMODELS_ENV)
    if not value:
        pytest.skip(f"{REALMODELS_ENV} is not set (point it at ../shared/realmodels to run real-model tests)")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{REALMODELS_ENV}={value!r} is not a directory")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bundled suites that read the real models are ``realmodel`` tests too, so ``-m "not realmodel"`` leaves
    them out of a quick local run like the other acceptance tests."""
    for item in items:
        suite = getattr(item, "suite", None)
        if suite is not None and REALMODELS_ENV in getattr(suite, "variables", ()):
            item.add_marker(pytest.mark.realmodel)
