"""The /status page's prefetch section (rendered without a browser)."""

from __future__ import annotations

import os

from locpick.cache.prefetch import PrefetchImage, PrefetchState
from locpick.serve.status import NodeStatus, render


def _page(prefetch: PrefetchState | None) -> str:
    return render(
        NodeStatus(
            cache_dir="/c",
            entries=(),
            max_bytes=None,
            leases={},
            transfers=(),
            fills=(),
            downloads=(),
            started_at=0.0,
            version="0",
            prefetch=prefetch,
        ),
        now=100.0,
    )


def test_status_shows_each_prefetched_image_its_progress_and_escapes_errors() -> None:
    state = PrefetchState(
        pid=os.getpid(),
        started_at=10.0,
        updated_at=90.0,
        images=(
            PrefetchImage("img-a", "cached", 100, 100),
            PrefetchImage("img-b", "fetching", 25, 100),
            PrefetchImage("img-c", "failed", error="<script>x</script>"),
        ),
    )
    html = _page(state)
    assert "running" in html and "3 image(s): 1 cached, 1 fetching, 1 failed" in html
    assert "img-a" in html and "img-b" in html and 'style="width:25%"' in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>" not in html


def test_status_without_a_prefetch_says_so() -> None:
    assert "No prefetch has run on this cache." in _page(None)
