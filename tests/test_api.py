"""The public API an agent uses: ``locpick.download``/``adownload``, ``Client`` and
``AsyncClient`` with progress, cancel and timeout, against real loopback origins."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from helpers import image_record, temp_leftovers

import locpick
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.config.model import Config, ProbeConfig, TransferConfig

SIZE = 8 << 20
DATA = bytes(range(256)) * (SIZE // 256)
#: One source at a time (the single-copy path); the swarm's own cancellation is the engine's.
ONE = Config(probe=ProbeConfig(deadline=1.5), transfer=TransferConfig(max_sources=1))
#: The slow uplink a cancel lands in the middle of: the whole image takes ~2 s.
UPLINK = 4e6
OLD = b"the file that was at dest before"


def _prepare(tmp_path: Path) -> Path:
    dest = tmp_path / "out"
    dest.write_bytes(OLD)
    return dest


def _part(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.locpick-part"


def test_download_progress_one_thread_monotonic_final(tmp_path: Path) -> None:
    """locpick.download's progress: Progress values, from one thread, never going back, the
    last one (all bytes, == total) delivered before download returns."""
    calls: list[tuple[int, locpick.Progress]] = []
    with Origin(DATA, faults=Faults(bandwidth=40e6)) as origin:
        rec = image_record("img", DATA, [origin.url])
        result = locpick.download(
            "img",
            tmp_path / "out",
            metadata=rec,
            config=ONE,
            progress=lambda p: calls.append((threading.get_ident(), p)),
        )
        seen = list(calls)  # as it was when download returned
    assert (tmp_path / "out").read_bytes() == DATA
    assert len(seen) >= 2
    assert len({ident for ident, _p in seen}) == 1
    dones = [p.done for _i, p in seen]
    assert dones == sorted(dones)
    last = seen[-1][1]
    assert (last.done, last.total, last.image_id) == (SIZE, SIZE, "img")
    assert last.fraction == 1.0
    assert result.bytes == SIZE


def test_swarm_progress_from_one_thread(tmp_path: Path) -> None:
    """With pieces from several copies at once (reader threads), the callback still runs in
    one thread, never concurrently, and never goes back."""
    data = DATA * 2
    calls: list[int] = []
    dones: list[int] = []
    inside = threading.Lock()
    overlapped = []

    def progress(p: locpick.Progress) -> None:
        if not inside.acquire(blocking=False):
            overlapped.append(p)
            return
        try:
            calls.append(threading.get_ident())
            dones.append(p.done)
            time.sleep(0.002)  # a slow callback: calls would overlap if made from readers
        finally:
            inside.release()

    cfg = Config(probe=ProbeConfig(deadline=1.5), transfer=TransferConfig(piece_size=1 << 20))
    faults = Faults(bandwidth=40e6)
    with Origin(data, faults=faults) as a, Origin(data, faults=faults) as b:
        rec = image_record("img", data, [a.url, b.url])
        with locpick.Client(config=cfg) as client:
            result = client.download("img", tmp_path / "out", metadata=rec, progress=progress)
    assert len(result.sources) == 2  # really a swarm
    assert overlapped == []
    assert len(set(calls)) == 1
    assert dones == sorted(dones) and dones[-1] == len(data)


def test_cancel_mid_transfer_keeps_part_dest_untouched(tmp_path: Path) -> None:
    """Setting ``cancel`` mid-transfer ends the download with Cancelled long before the rest
    could arrive; dest keeps its old bytes, the part is kept, and the next run resumes."""
    dest = _prepare(tmp_path)
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def progress(p: locpick.Progress) -> None:
        if p.done >= 1 << 20 and not cancel.is_set():
            cancelled_at.append(time.monotonic())
            cancel.set()

    with Origin(DATA, faults=Faults(uplink=UPLINK)) as origin:
        rec = image_record("img", DATA, [origin.url])
        with locpick.Client(config=ONE) as client:
            with pytest.raises(locpick.Cancelled, match="cancelled"):
                client.download("img", dest, metadata=rec, progress=progress, cancel=cancel)
            stopped = time.monotonic() - cancelled_at[0]
            assert dest.read_bytes() == OLD
            assert _part(dest).exists()
            sent = origin.bytes_sent
            assert 0 < sent < SIZE
            # The reference, measured here: the rest of the image over the same uplink.
            t0 = time.monotonic()
            client.download("img", dest, metadata=rec)
            rest = time.monotonic() - t0
            second = origin.bytes_sent - sent
    assert dest.read_bytes() == DATA
    # resumed from the kept part: the bytes of the cancelled run are not asked for again
    # (at most the piece in flight when it was cancelled)
    assert second < SIZE and sent + second < SIZE + SIZE // 4, (sent, second)
    assert stopped < rest / 3
    assert temp_leftovers(tmp_path) == []


def test_cancel_before_start_raises_and_fetches_nothing(tmp_path: Path) -> None:
    """An event already set: Cancelled before any byte moves."""
    dest = _prepare(tmp_path)
    cancel = threading.Event()
    cancel.set()
    with Origin(DATA) as origin:
        rec = image_record("img", DATA, [origin.url])
        with pytest.raises(locpick.Cancelled):
            locpick.download("img", dest, metadata=rec, config=ONE, cancel=cancel)
        assert origin.bytes_sent == 0
    assert dest.read_bytes() == OLD


def test_raising_progress_callback_aborts(tmp_path: Path) -> None:
    """A callback that raises aborts the download with its own exception; dest untouched."""
    dest = _prepare(tmp_path)

    class Stop(Exception):
        pass

    def progress(p: locpick.Progress) -> None:
        if p.done >= 1 << 20:
            raise Stop("enough")

    with Origin(DATA, faults=Faults(uplink=UPLINK)) as origin:
        rec = image_record("img", DATA, [origin.url])
        with pytest.raises(Stop):
            locpick.download("img", dest, metadata=rec, config=ONE, progress=progress)
        assert origin.bytes_sent < SIZE
    assert dest.read_bytes() == OLD


def test_timeout_ends_download(tmp_path: Path) -> None:
    """``timeout`` bounds the whole download: AllLocationsFailed naming it, dest untouched."""
    dest = _prepare(tmp_path)
    with Origin(DATA, faults=Faults(uplink=UPLINK)) as origin:
        rec = image_record("img", DATA, [origin.url])
        with pytest.raises(locpick.AllLocationsFailed, match="timeout"):
            locpick.download("img", dest, metadata=rec, config=ONE, timeout=0.5)
        assert origin.bytes_sent < SIZE
    assert dest.read_bytes() == OLD


def test_adownload_progress_in_loop_thread(tmp_path: Path) -> None:
    """``await locpick.adownload``: the image, with progress called in the loop's thread."""
    threads: set[int] = set()
    dones: list[int] = []

    def progress(p: locpick.Progress) -> None:
        threads.add(threading.get_ident())
        dones.append(p.done)

    async def main() -> locpick.Result:
        return await locpick.adownload(
            "img", tmp_path / "out", metadata=rec, config=ONE, progress=progress
        )

    with Origin(DATA, faults=Faults(bandwidth=40e6)) as origin:
        rec = image_record("img", DATA, [origin.url])
        result = asyncio.run(main())
    assert result.bytes == SIZE
    assert (tmp_path / "out").read_bytes() == DATA
    assert threads == {threading.get_ident()}  # asyncio.run's loop runs in this thread
    assert dones == sorted(dones) and dones[-1] == SIZE


def test_async_task_cancel_stops_transfer(tmp_path: Path) -> None:
    """Cancelling the task awaiting AsyncClient.download stops the transfer: CancelledError
    once the worker thread has ended, dest untouched, part kept, the origin left unread."""
    dest = _prepare(tmp_path)

    async def main() -> tuple[float, int]:
        async with locpick.AsyncClient(config=ONE) as client:
            task: asyncio.Task[locpick.Result] | None = None
            marks: list[float] = []

            def progress(p: locpick.Progress) -> None:
                if p.done >= 1 << 20 and task is not None and not marks:
                    marks.append(time.monotonic())
                    task.cancel()

            task = asyncio.create_task(
                client.download("img", dest, metadata=rec, progress=progress)
            )
            with pytest.raises(asyncio.CancelledError):
                await task
            workers = [t for t in threading.enumerate() if t.name == "locpick-async"]
            assert workers == []  # the sync download had ended before CancelledError
            return time.monotonic() - marks[0], origin.bytes_sent

    with Origin(DATA, faults=Faults(uplink=UPLINK)) as origin:
        rec = image_record("img", DATA, [origin.url])
        stopped, sent = asyncio.run(main())
        t0 = time.monotonic()
        locpick.download("img", dest, metadata=rec, config=ONE)
        rest = time.monotonic() - t0
    assert sent < SIZE
    assert stopped < rest / 3
    assert dest.read_bytes() == DATA


def test_cache_evict_returns_values(tmp_path: Path) -> None:
    """locpick.Cache: entries and evict return values, not text."""
    cache_dir = tmp_path / "cache"
    with Origin(DATA) as origin:
        rec = image_record("img", DATA, [origin.url])
        locpick.download("img", tmp_path / "out", metadata=rec, config=ONE, cache_dir=cache_dir)
    with locpick.Cache(cache_dir, config=ONE) as cache:
        assert [e.image_id for e in cache.entries()] == ["img"]
        result = cache.evict(["img", "other"])
        assert result == locpick.EvictResult(evicted=("img",), missing=("other",))
        assert cache.entries() == ()


def test_public_names_exported_and_documented() -> None:
    """Every name in ``locpick.__all__`` resolves and has a docstring of its own."""
    missing = []
    for name in locpick.__all__:
        value = getattr(locpick, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        doc = getattr(value, "__doc__", None)
        if not doc or not doc.strip():
            missing.append(name)
    assert missing == []
    for name in ("Score", "Attempt", "SourceShare", "CacheStep", "Image", "Location"):
        assert name in locpick.__all__
    for name in ("Environment", "Progress", "Cancelled", "AsyncClient", "Cache", "Fleet"):
        assert name in locpick.__all__


def test_client_keeps_probe_cache_across_calls(tmp_path: Path) -> None:
    """One Client keeps its probe results across calls (``[probe] cache_ttl``): ranking twice
    measures once, where one-shot ``locpick.rank`` calls measure every time."""
    with Origin(DATA) as a, Origin(DATA) as b:
        rec = image_record("img", DATA, [a.url, b.url])
        with locpick.Client(config=ONE) as client:
            client.rank("img", metadata=rec)
            first = len(a.requests) + len(b.requests)
            client.rank("img", metadata=rec)
            kept = len(a.requests) + len(b.requests) - first
        before = len(a.requests) + len(b.requests)
        locpick.rank("img", metadata=rec, config=ONE)
        locpick.rank("img", metadata=rec, config=ONE)
        one_shot = len(a.requests) + len(b.requests) - before
    assert first >= 2
    assert kept == 0
    assert one_shot == 2 * first
