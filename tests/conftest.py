"""Shared fixtures: where the real data lives, and hypothesis profiles."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
#: ../shared beside the repository (CI lays a copy there); FASTPATH_SHARED overrides.
SHARED = Path(os.environ.get("FASTPATH_SHARED", ROOT.parent / "shared"))
DATA = ROOT / "tests" / "data"

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def shared_file(name: str) -> Path:
    path = SHARED / "data" / name
    if not path.exists():
        pytest.skip(f"{path} not present (set FASTPATH_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def routeviews_v4_path() -> Path:
    return shared_file("routeviews-rv2-20160202-1200.pfx2as.gz")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Every test's compiled-table cache (``fastpath.cache``) lives in a temporary folder, never
    ``~/.cache/fastpath``; CLI subprocesses inherit it."""
    old = os.environ.get("FASTPATH_CACHE_DIR")
    os.environ["FASTPATH_CACHE_DIR"] = str(tmp_path_factory.mktemp("fastpath-cache"))
    yield
    if old is None:
        os.environ.pop("FASTPATH_CACHE_DIR", None)
    else:
        os.environ["FASTPATH_CACHE_DIR"] = old
