"""The one interface every transport implements, and the context they share.

A transport knows one family of schemes. It can say whether a location is usable at all
(``check``, no I/O beyond local stat calls), measure it (``probe``), and open a byte stream at
an offset (``open``). Nothing outside ``locpick.transports`` knows about schemes.
"""

from __future__ import annotations

import ssl
import threading
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import httpx

from locpick.models import Image, Location, Probe

if TYPE_CHECKING:
    from locpick.config import Config


class Stream(Protocol):
    """Bytes of one location from ``start`` on. ``readinto`` returns 0 at the end."""

    #: Offset of the first byte this stream delivers (may be < the asked offset, e.g. a
    #: server that ignored Range: the caller discards what it already has).
    start: int
    #: Total size of the resource when the server said so, else None.
    total: int | None
    #: The URL that actually serves the bytes (after redirects), display-safe.
    final_url: str

    def readinto(self, buf: memoryview) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """One family of schemes."""

    schemes: tuple[str, ...]

    def check(self, location: Location, image: Image) -> str | None:
        """Return a reason the location is unusable, without network I/O; None when fine."""
        ...

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        """Measure latency (and what else is cheap) with one small read."""
        ...

    def open(self, location: Location, image: Image, *, offset: int) -> Stream:
        """Open the location's bytes at ``offset``; raise a LocationError on failure."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class PieceTransport(Protocol):
    """A transport that can open a bounded byte range: a piece of a swarm fetch."""

    #: Declares that ``open(..., end=...)`` asks for ``[offset, end)`` only.
    supports_pieces: bool

    def open(
        self, location: Location, image: Image, *, offset: int, end: int | None = None
    ) -> Stream:
        """Open ``[offset, end)`` (``end`` None: to the end). A server may still answer with
        the whole body (``stream.start`` 0): the caller checks ``start``."""
        ...


class Context:
    """What transports share within one client: config, HTTP pool, credentials."""

    def __init__(
        self, config: Config, *, glance_url: str | None = None, token: str | None = None
    ) -> None:
        self.config = config
        self.glance_url = glance_url
        self.token = token
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        """One pooled httpx client per Context (thread-safe), TLS verification on by default."""
        with self._lock:
            if self._http is None:
                verify = tls_verify(self.config)
                t = self.config.transfer
                self._http = httpx.Client(
                    verify=verify,
                    follow_redirects=False,
                    timeout=httpx.Timeout(
                        connect=t.connect_timeout,
                        read=t.idle_timeout,
                        write=t.connect_timeout,
                        pool=t.connect_timeout,
                    ),
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                    trust_env=True,
                    headers={"User-Agent": "locpick", "Accept-Encoding": "identity"},
                )
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None


def tls_verify(config: Config) -> ssl.SSLContext | bool:
    """What httpx should verify against: the system trust store, ``[tls] ca_file``, or nothing
    (``verify = false`` / ``--insecure``, which the CLI and the Client warn about on every use)."""
    tls = config.tls
    if not tls.verify:
        return False
    if tls.ca_file:
        try:
            return ssl.create_default_context(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            from locpick.errors import ConfigError

            raise ConfigError(f"config [tls] ca_file {tls.ca_file}: cannot load ({exc})") from exc
    return True
