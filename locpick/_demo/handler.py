"""The origin's HTTP/1.1 server: one handler per connection that answers GET/HEAD for the image
(single ``Range``, ``If-Range``, ETag, 416) and applies the request's snapshot of the faults."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from locpick._demo.content import parse_range
from locpick._demo.faults import RequestRecord
from locpick._demo.pump import Abort, BodyPump, OriginView


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    request_queue_size = 128

    def __init__(self, origin: OriginView) -> None:
        self.origin = origin
        if ":" in origin.host:
            self.address_family = socket.AF_INET6
        super().__init__((origin.host, origin.bind_port), Handler)

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn() (slow reverse DNS)
        if self.address_family == socket.AF_INET6:
            # "::" with v6only off also accepts IPv4 peers, as IPv4-mapped addresses
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.origin.host, self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # disconnects are expected in fault tests


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.origin = self.server.origin
        self.origin.traffic.register(self.connection)
        self.pump = BodyPump(self.origin, self.connection, self._drop)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, Abort):
            self.close_connection = True

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.origin.traffic.unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    # ---------------------------------------------------------------- helpers

    def _record(self, status: int | None) -> None:
        self.origin.traffic.record(
            RequestRecord(
                method=self.command,
                path=self.path,
                headers=dict(self.headers.items()),
                range=self.headers.get("Range"),
                status=status,
                time=self._t0,
            )
        )

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self._record(status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _simple(self, status: int, headers: dict[str, str] | None = None) -> None:
        reason = self.responses.get(status, ("",))[0]
        body = b"" if status in (204, 304) else f"{status} {reason}\n".encode()
        hdrs = {"Content-Type": "text/plain", "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        self._start(status, hdrs)
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _drop(self, reset: bool) -> None:
        """Close the connection now: FIN (shutdown) or RST (SO_LINGER 0 + close)."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                self.rfile.close()  # drops the last io ref: the fd really closes -> RST
            else:
                sock.shutdown(socket.SHUT_RDWR)
        raise Abort

    # ---------------------------------------------------------------- main logic

    def _respond(self, body: bool) -> None:
        o = self.origin
        self._t0 = time.monotonic()
        f = o.snapshot()
        n_req = o.traffic.count_request()
        if f.blackhole:
            self._record(None)
            self.pump.wait(None)
        if f.first_byte_delay:
            self.pump.wait(f.first_byte_delay)
        if f.redirect_to is not None:
            return self._simple(302, {"Location": f.redirect_to})
        if f.status is not None:
            return self._simple(f.status)
        if n_req < f.fail_first_n:
            retry = {} if f.retry_after is None else {"Retry-After": str(f.retry_after)}
            return self._simple(f.fail_status, retry)
        if urlsplit(self.path).path != o.path:
            return self._simple(404)

        src, etag, lastmod = o.current()
        size = src.size
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and not f.ignore_range and (if_range is None or if_range in (etag, lastmod)):
            parsed = parse_range(rng, size)
            if parsed == "unsat":
                return self._simple(416, {"Content-Range": f"bytes */{size}"})
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
        extra = f.extra_bytes if f.extra_bytes > 0 else 0
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start + (extra if f.extra_in_length else 0)),
            "ETag": etag,
            "Last-Modified": lastmod,
        }
        if not f.ignore_range:
            headers["Accept-Ranges"] = "bytes"
        if status == 206:
            d = f.lie_content_range or 0
            headers["Content-Range"] = f"bytes {start + d}-{end - 1 + d}/{size}"
        headers.update(f.extra_headers)
        self._start(status, headers)
        if body:
            self.pump.send_body(src, start, end, f)
            if self.pump.close_after:
                self.close_connection = True
        return None
