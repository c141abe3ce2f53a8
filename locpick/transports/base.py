"""The one interface every transport implements, and the context they share.

A transport knows one family of schemes. It can say whether a location is usable at all
(``check``, no I/O beyond local stat calls), measure it (``probe``), and open a byte stream at
an offset (``open``); what it can do beyond that it declares in ``capabilities``. Nothing
outside ``locpick.transports`` knows about schemes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import httpcore
import httpx

from locpick.errors import UnsupportedLocation
from locpick.models import ByteProgress, Image, Location, Probe
from locpick.net.addr import parse_host, sockaddr_ip
from locpick.net.policy import NetPolicy

if TYPE_CHECKING:
    from locpick.config.model import Config
    from locpick.sink.atomic import AtomicSink
    from locpick.transports.file import sharedfs


@attrs.frozen
class Capabilities:
    """What a transport can do beyond ``check``/``probe``/``open``: callers decide by these,
    never by the transport's class or by looking for attributes."""

    #: ``copy_to`` copies at the file-descriptor level into the sink (a shared filesystem).
    system_copy: bool = False
    #: ``open(..., end=)`` asks for ``[offset, end)`` only: a piece of a swarm fetch.
    bounded_ranges: bool = False
    #: ``open(..., if_range=)`` sends the validator; its streams report ``etag``,
    #: ``last_modified`` and ``changed``.
    if_range: bool = False
    #: Its streams honour ``set_idle_timeout``.
    idle_timeout: bool = False
    #: ``route`` says how a location is reached (direct or through a proxy).
    route: bool = False


@runtime_checkable
class Stream(Protocol):
    """Bytes of one location from ``start`` on. ``readinto`` returns 0 at the end."""

    #: Offset of the first byte this stream delivers (may be < the asked offset, e.g. a
    #: server that ignored Range: the caller discards what it already has).
    start: int
    #: Total size of the resource when the server said so, else None.
    total: int | None
    #: The URL that actually serves the bytes (after redirects), display-safe.
    final_url: str
    #: Validators of the bytes served (None when the transport has none).
    etag: str | None
    last_modified: str | None
    #: An If-Range was sent and the whole (changed) resource came instead.
    changed: bool

    def set_idle_timeout(self, seconds: float) -> None:
        """Bound the wait for the next bytes (a no-op where the transport cannot)."""
        ...

    def readinto(self, buf: memoryview) -> int: ...

    def close(self) -> None: ...


class StreamDefaults:
    """The optional part of ``Stream`` for streams without validators or idle bounds."""

    etag: str | None = None
    last_modified: str | None = None
    changed: bool = False

    def set_idle_timeout(self, seconds: float) -> None:
        """Nothing to bound."""


@runtime_checkable
class Transport(Protocol):
    """One family of schemes."""

    schemes: tuple[str, ...]

    @property
    def capabilities(self) -> Capabilities: ...

    def check(self, location: Location, image: Image) -> str | None:
        """Return a reason the location is unusable, without network I/O; None when fine."""
        ...

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        """Measure latency (and what else is cheap) with one small read."""
        ...

    def open(
        self,
        location: Location,
        image: Image,
        *,
        offset: int,
        end: int | None = None,
        if_range: str | None = None,
    ) -> Stream:
        """Open the location's bytes at ``offset``; raise a LocationError on failure.

        ``end`` (exclusive) and ``if_range`` are only passed when ``capabilities`` says they
        are honoured. A server may still answer with the whole body (``stream.start`` 0):
        the caller checks ``start``."""
        ...

    def copy_to(
        self, location: Location, image: Image, sink: AtomicSink, progress: ByteProgress | None
    ) -> str:
        """System-copy into ``sink`` (``capabilities.system_copy``); returns the engine used."""
        ...

    def shared_fs(
        self, location: Location, image: Image, dest_dir: str | None
    ) -> sharedfs.FsReport | None:
        """The shared-filesystem report of the location, or None when it is not on one."""
        ...

    def route(self, location: Location) -> str | None:
        """How the location is reached (``capabilities.route``), else None."""
        ...

    def close(self) -> None: ...


class TransportDefaults:
    """The optional part of ``Transport`` for transports that lack a capability."""

    capabilities = Capabilities()

    def copy_to(
        self, location: Location, image: Image, sink: AtomicSink, progress: ByteProgress | None
    ) -> str:
        shown = location.display_url
        raise UnsupportedLocation(f"{shown}: no system copy for this scheme", url=shown)

    def shared_fs(
        self, location: Location, image: Image, dest_dir: str | None
    ) -> sharedfs.FsReport | None:
        return None

    def route(self, location: Location) -> str | None:
        return None


class Context:
    """What transports share within one client: config, connection policy, HTTP pool,
    credentials."""

    def __init__(
        self,
        config: Config,
        *,
        glance_url: str | None = None,
        token: str | None = None,
        net: NetPolicy | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.glance_url = glance_url
        self.token = token
        #: The environment snapshot taken at the edge (``Environment.vars``); empty when none.
        self.env: Mapping[str, str] = dict(env or {})
        #: Routes, forbidden networks and trust (from ``config`` and ``env`` when not given).
        self.net = net if net is not None else NetPolicy.from_environment(config, self.env)
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        """One pooled httpx client per Context (thread-safe): every request takes the route
        and trust of ``net``, and a direct connection never reaches a forbidden address."""
        with self._lock:
            if self._http is None:
                t = self.config.transfer
                self._http = httpx.Client(
                    transport=RoutingTransport(self.net),
                    follow_redirects=False,
                    timeout=httpx.Timeout(
                        connect=t.connect_timeout,
                        read=t.idle_timeout,
                        write=t.connect_timeout,
                        pool=t.connect_timeout,
                    ),
                    trust_env=False,
                    headers={"User-Agent": "locpick", "Accept-Encoding": "identity"},
                )
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None


#: Connections of the shared client: probes of many silent copies at once (happy eyeballs,
#: ``choose.probe.MAX_IN_FLIGHT``) must not queue behind each other for a pool slot.
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=32)


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket layer, connecting only to addresses the policy allows and checking
    the peer it really got (a name that resolves differently on the second lookup changes
    nothing: the checked address is the one connected to)."""

    def __init__(self, net: NetPolicy) -> None:
        self._net = net

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(parse_host(host), port, type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            raise httpcore.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        connect = super().connect_tcp

        def dial(info: tuple[Any, ...]) -> httpcore.NetworkStream:
            return connect(str(sockaddr_ip(info[4])), port, timeout, local_address, socket_options)

        return self._net.dial_checked(
            host, infos, dial,
            lambda stream: stream.get_extra_info("socket"), lambda stream: stream.close(),
            (httpcore.ConnectError, httpcore.ConnectTimeout),
            lambda: httpcore.ConnectError(f"no address for {host}"),
        )  # fmt: skip


class RoutingTransport(httpx.BaseTransport):
    """Sends each request the way the policy routes its URL: directly (guarded) or through
    its proxy (CONNECT for https), with the policy's one SSLContext."""

    def __init__(self, net: NetPolicy) -> None:
        self._net = net
        self._lock = threading.Lock()
        self._direct = httpx.HTTPTransport(verify=net.ssl_context, trust_env=False, limits=_LIMITS)
        pool = getattr(self._direct, "_pool", None)
        if pool is None or not hasattr(pool, "_network_backend"):
            raise RuntimeError("httpx/httpcore changed: cannot install the address guard")
        pool._network_backend = GuardedBackend(net)
        self._proxied: dict[str, httpx.HTTPTransport] = {}

    def _for(self, url: str) -> httpx.HTTPTransport:
        proxy = self._net.route(url)
        if proxy is None:
            return self._direct
        with self._lock:
            transport = self._proxied.get(proxy)
            if transport is None:
                transport = self._proxied[proxy] = httpx.HTTPTransport(
                    verify=self._net.ssl_context,
                    trust_env=False,
                    limits=_LIMITS,
                    proxy=httpx.Proxy(
                        proxy,
                        ssl_context=self._net.ssl_context if proxy.startswith("https:") else None,
                    ),
                )
            return transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._for(str(request.url)).handle_request(request)

    def close(self) -> None:
        self._direct.close()
        with self._lock:
            for transport in self._proxied.values():
                transport.close()
            self._proxied.clear()
