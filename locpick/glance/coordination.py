"""One writer at a time per image: the lock every locpick write to a location list takes.

Glance has no compare-and-set on an image's locations (no JSON-patch ``test``; a removal names
an index, and a stale index removes whatever sits there now, with the data of a store-managed
location). So locpick serialises its own writers per image with OpenStack's ``tooz`` (etcd
through ``etcd3gw``, ``file://`` for one host, any backend tooz knows), configured by
``[fleet] coordination``; the removal re-reads the list inside the lock. Without a backend
there is no lock and the writers keep to what is safe unlocked: appends only, removals only by
the one process the operator runs for it (``locpick cache reap``, ``verify --prune``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from locpick.errors import ConfigError, LocpickError
from locpick.redact import redact_url

log = logging.getLogger(__name__)

__all__ = ["Coordination", "LockTimeout", "coordination_for"]


class LockTimeout(LocpickError):
    """The image's write lock was not granted in time; nothing was written."""

    exit_code = 3


class Coordination:
    """No coordination backend: no lock (``serialised`` False), so only appends are safe."""

    serialised = False
    url: str | None = None

    @contextlib.contextmanager
    def hold(self, image_id: str) -> Iterator[None]:
        """Nothing to hold; callers check :attr:`serialised` before any removal."""
        yield

    def close(self) -> None:
        """Nothing to release."""


class ToozCoordination(Coordination):
    """A tooz coordinator, started on first use; one named lock per image."""

    serialised = True

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self._backend = url
        self.timeout = timeout
        self._coordinator: Any = None
        self._guard = threading.Lock()

    def _started(self) -> Any:
        with self._guard:
            if self._coordinator is None:
                try:
                    from tooz import coordination
                except ImportError as exc:
                    raise ConfigError(
                        "[fleet] coordination needs tooz (and etcd3gw for etcd): "
                        "pip install 'locpick[fleet]'"
                    ) from exc
                member = f"locpick-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    coordinator = coordination.get_coordinator(self._backend, member.encode())
                    coordinator.start(start_heart=True)
                except Exception as exc:  # tooz raises its own and its drivers' errors
                    raise ConfigError(
                        f"[fleet] coordination {redact_url(self._backend)}: cannot start "
                        f"({type(exc).__name__}: {str(exc)[:200]}); check the URL and that "
                        "the backend runs"
                    ) from exc
                self._coordinator = coordinator
            return self._coordinator

    @contextlib.contextmanager
    def hold(self, image_id: str) -> Iterator[None]:
        """Hold image ``image_id``'s write lock for the block (LockTimeout if not granted)."""
        lock = self._started().get_lock(f"locpick-glance-{image_id}".encode())
        started = time.monotonic()
        try:
            got = lock.acquire(blocking=self.timeout)
        except Exception as exc:
            if time.monotonic() - started >= self.timeout * 0.9:  # etcd3gw: RetryError
                got = False
            else:
                raise LockTimeout(
                    f"image {image_id}: write lock from {redact_url(self._backend)} failed "
                    f"({type(exc).__name__}); nothing written; check the coordination backend"
                ) from exc
        if not got:
            raise LockTimeout(
                f"image {image_id}: write lock not granted within {self.timeout:g}s by "
                f"{redact_url(self._backend)}; nothing written; raise [fleet] lock_timeout"
            )
        try:
            yield
        finally:
            try:
                lock.release()
            except Exception:  # noqa: BLE001 - any driver error: the lock lease ends by itself
                log.warning("image %s: write lock not released (it times out)", image_id)

    def close(self) -> None:
        """Stop the coordinator (its locks go with it)."""
        with self._guard:
            coordinator, self._coordinator = self._coordinator, None
        if coordinator is not None:
            with contextlib.suppress(Exception):
                coordinator.stop()


def coordination_for(url: str | None, *, timeout: float = 30.0) -> Coordination:
    """The coordination of ``[fleet] coordination`` (None: none, appends only)."""
    if not url:
        return Coordination()
    return ToozCoordination(url, timeout=timeout)
