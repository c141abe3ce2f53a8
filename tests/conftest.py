"""Shared fixtures. Topic-specific fixtures live beside their tests (tests/fixtures_*.py)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures_glance import glance_world_fixture  # noqa: F401
from harness import venvs

from locpick.redact import SCRUB

HERE = Path(__file__).resolve().parent

# glance_world_fixture (imported above): one Glance world shared by test_auth.py and
# test_sources_glance.py (one file until split by module); files that import the fixture
# themselves keep a world of their own.


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """No test reads the developer's config, OpenStack env or history file."""
    for var in list(os.environ):
        if var.startswith(("OS_", "AWS_")):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOCPICK_CONFIG", str(HERE / "empty-config.toml"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield


@pytest.fixture(autouse=True)
def _isolated_scrubber() -> Iterator[None]:
    """Secrets one test teaches the process-wide scrubber leave with it.

    Property tests feed arbitrary URLs to the transports, which register the passwords and
    keys in them; Hypothesis draws words from locpick's own source ('swift', 'system'), and
    a later test then saw 'not-on-configured-file***' (seen in CI, order-dependent)."""
    saved = SCRUB.known()
    yield
    SCRUB.reset(saved)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the harness venvs the selected tests need (Glance, Keystone, Swift from PyPI)
    in parallel before the first test starts: a cold cache then costs ~1 min once instead
    of eating into one test's timeout. A failed build is reported by the fixture later."""
    kinds: set[str] = set()
    for item in session.items:
        if item.get_closest_marker("glance"):
            kinds |= {"glance", "keystone"}
        if item.get_closest_marker("swift"):
            kinds.add("swift")
        if "keystone" in getattr(item, "fixturenames", ()):
            kinds.add("keystone")
    missing = sorted(k for k in kinds if not venvs.venv_ok(k, venvs.cache_dir(k) / "venv"))
    if not missing:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        where = venvs.cache_root()
        reporter.write_line(f"harness: installing {', '.join(missing)} into {where} (once)")
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(missing)) as pool:
        for future in [pool.submit(venvs.ensure_venv, k) for k in missing]:
            with contextlib.suppress(venvs.HarnessError, OSError):
                future.result()
    if reporter is not None:
        reporter.write_line(f"harness: venvs ready in {time.monotonic() - t0:.0f}s")
