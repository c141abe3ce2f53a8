"""asyncio callers: :class:`AsyncClient` runs the one sync engine in a worker thread.

There is no second, async engine (STYLE: one sync core, async wraps it). Each call runs the
sync :class:`~locpick.client.Client` call in a thread of its own; cancelling the awaiting task
sets the download's ``cancel`` event and waits for the thread to end, so by the time the
task's ``CancelledError`` propagates the download has stopped, ``dest`` is untouched and the
part file is kept for the next run. Progress callbacks run in the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Self, TypeVar

from locpick.client import Client
from locpick.config.env import Environment
from locpick.config.model import Config
from locpick.jobs.progress import ProgressCallback
from locpick.jobs.session import Metadata
from locpick.models import Progress, Ranking, Result, VerifyReport
from locpick.report import Recorder

__all__ = ["AsyncClient", "run_in_thread"]

T = TypeVar("T")

#: A sync call given the cancel event and the (thread-safe) progress callback to use.
Call = Callable[[threading.Event, ProgressCallback | None], T]


async def run_in_thread(call: Call[T], progress: ProgressCallback | None = None) -> T:
    """Run ``call`` in a new thread and await its result; cancelling the awaiting task sets
    the cancel event handed to ``call`` and waits for the thread to return before re-raising.

    ``progress`` (if any) is called in the event loop's thread; if it raises, the call is
    cancelled and that exception raised here."""
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    done: asyncio.Future[T] = loop.create_future()
    failed: list[BaseException] = []

    def in_loop(value: Progress) -> None:
        if failed or progress is None:
            return
        try:
            progress(value)
        except BaseException as exc:  # noqa: BLE001 - raised by the awaiting call below
            failed.append(exc)
            cancel.set()

    def relay(value: Progress) -> None:
        loop.call_soon_threadsafe(in_loop, value)

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = call(cancel, relay if progress is not None else None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            _post(loop, settle, None, exc)
        else:
            _post(loop, settle, result, None)

    thread = threading.Thread(target=work, name="locpick-async", daemon=True)
    thread.start()
    try:
        result = await asyncio.shield(done)
    except asyncio.CancelledError:
        cancel.set()
        while not done.done():  # the thread ends promptly once cancel is set
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                continue
            except BaseException:  # noqa: BLE001 - the expected Cancelled (or any end)
                break
        if done.done() and not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning
            thread.join()  # it has handed over its outcome: only its return is left
        raise
    except BaseException:
        if failed:
            raise failed[0] from None
        raise
    thread.join()
    return result  # a callback that raised after the last byte: the image is delivered anyway


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    """``fn(*args)`` in the loop's thread; nothing if the loop has closed meanwhile."""
    with contextlib.suppress(RuntimeError):  # closed: nobody awaits the result any more
        loop.call_soon_threadsafe(fn, *args)


class AsyncClient:
    """:class:`~locpick.client.Client` for asyncio: the same calls, awaited.

    ``async with locpick.AsyncClient(...) as client: result = await client.download(...)``.
    Cancelling the task that awaits :meth:`download` stops the transfer (``dest`` untouched,
    part kept); progress callbacks run in the event loop's thread.
    """

    def __init__(
        self,
        *,
        config: Config | str | os.PathLike[str] | None = None,
        glance_url: str | None = None,
        token: str | None = None,
        insecure: bool = False,
        env: Environment | None = None,
    ) -> None:
        self.client = Client(
            config=config, glance_url=glance_url, token=token, insecure=insecure, env=env
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections (in a thread: closing may wait on sockets)."""
        await asyncio.to_thread(self.client.close)

    async def download(
        self,
        image_id: str,
        dest: str | os.PathLike[str],
        *,
        metadata: Metadata | None = None,
        allow_unverified: bool = False,
        progress: ProgressCallback | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        register: bool | None = None,
        recorder: Recorder | None = None,
        timeout: float | None = None,
    ) -> Result:
        """:meth:`Client.download <locpick.client.Client.download>`, awaited; cancel the task
        to cancel the download (it raises ``CancelledError`` once the transfer has stopped)."""

        def call(cancel: threading.Event, relay: ProgressCallback | None) -> Result:
            return self.client.download(
                image_id,
                dest,
                metadata=metadata,
                allow_unverified=allow_unverified,
                progress=relay,
                cache_dir=cache_dir,
                register=register,
                recorder=recorder,
                timeout=timeout,
                cancel=cancel,
            )

        return await run_in_thread(call, progress)

    async def rank(self, image_id: str, *, metadata: Metadata | None = None) -> Ranking:
        """:meth:`Client.rank <locpick.client.Client.rank>`, awaited."""
        return await asyncio.to_thread(self.client.rank, image_id, metadata=metadata)

    async def verify(
        self,
        image_id: str,
        *,
        metadata: Metadata | None = None,
        quick: bool = False,
        prune: bool = False,
        yes: bool = False,
    ) -> VerifyReport:
        """:meth:`Client.verify <locpick.client.Client.verify>`, awaited."""
        return await asyncio.to_thread(
            self.client.verify, image_id, metadata=metadata, quick=quick, prune=prune, yes=yes
        )
