"""A real etcd per test session (``tests/harness/etcd.py``), for ``[fleet] coordination``.

Import with ``from fixtures_etcd import etcd_fixture`` (registered as ``etcd``). Without etcd
installed the tests skip with an install hint, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from harness.etcd import INSTALL_HINT, EtcdHandle, etcd_binary, start_etcd


@pytest.fixture(scope="session", name="etcd")
def etcd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdHandle]:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    pytest.importorskip("etcd3gw", reason="pip install 'locpick[fleet]'")
    handle = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield handle
    finally:
        handle.stop()
