"""Bytes a node mirrored into its filling copy from a source later proved wrong (issue 24): they
are withdrawn (the fill record holds nothing again) before the copy fills anew from the next
source, so peers wait for good bytes instead of reading the wrong ones as held, and the copy
stays a parent instead of failing. Real parts: two demo origins, one flipping bytes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import locpick
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.cache.fill.record import read_fill
from locpick.cache.store import NodeCache
from locpick.config.model import CacheConfig, Config, Topology
from tests.helpers import image_record

IMG = "img-withdraw"


def test_wrong_bytes_are_withdrawn_and_the_copy_fills_anew(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    cache = tmp_path / "cache"
    wrong = Faults(corrupt_at=range(0, len(data), 64 * 1024))
    # the liar is closest (same rack) and fast; the honest origin is slower: the liar goes first
    with (
        Origin(data, faults=wrong) as liar,
        Origin(data, faults=Faults(bandwidth=4e6, first_byte_delay=0.3)) as good,
    ):
        record = image_record(IMG, data, [(liar.url, {"rack": "r1"}), good.url])
        seen: list[tuple[str, int]] = []
        done = threading.Event()

        def watch() -> None:
            path = cache / "images" / (IMG + ".fill")
            while not done.is_set():
                try:
                    snap = read_fill(path)
                except Exception:  # a torn read of a record being replaced
                    snap = None
                if snap is not None and (not seen or seen[-1] != (snap.state, snap.written)):
                    seen.append((snap.state, snap.written))
                time.sleep(0.001)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        config = Config(
            history_file="", topology=Topology(rack="r1"), cache=CacheConfig(dir=str(cache))
        )
        try:
            with locpick.Client(config=config) as client:
                result = client.download(IMG, tmp_path / "dest", metadata=record)
        finally:
            done.set()
            w.join(10)
    assert result.verified and (tmp_path / "dest").read_bytes() == data
    assert liar.bytes_sent >= len(data), "the liar was not read first: nothing was tested"
    assert all(state != "failed" for state, _ in seen), seen
    peak = max(written for _, written in seen)
    after = [written for _, written in seen[[w for _, w in seen].index(peak) :]]
    assert min(after) < peak, f"the wrong bytes were never withdrawn: {seen[:5]}..."
    entry = NodeCache(cache).entry(IMG)
    assert entry is not None and entry.path.read_bytes() == data
