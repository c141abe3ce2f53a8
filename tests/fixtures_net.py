"""Real network pieces for the connection-policy tests: a forward proxy that counts what it
relays (absolute-form GETs and CONNECT tunnels), a TLS site shaped like Glance (record +
image, optional client-certificate requirement), a redirector on any loopback address, and a
reverse proxy that counts the requests made of a real Glance."""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class ForwardProxy:
    """A threaded HTTP forward proxy on 127.0.0.1: ``GET http://host:port/path`` is relayed
    (one upstream connection per request, ``Connection: close``), ``CONNECT host:port`` opens
    a tunnel. ``requests`` lists (method, target); ``relayed`` counts bytes sent back to
    clients."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        self.relayed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _count(self, n: int) -> None:
        with self._lock:
            self.relayed += n

    def _client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                raw, _, buf = buf.partition(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                with self._lock:
                    self.requests.append((method, target))
                if method == "CONNECT":
                    self._tunnel(conn, target, buf)
                    return
                length = next(
                    (
                        int(h.split(":", 1)[1])
                        for h in lines[1:]
                        if h.lower().startswith("content-length:")
                    ),
                    0,
                )
                while len(buf) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                if not self._forward(conn, method, target, version, lines[1:], body):
                    return
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _tunnel(self, conn: socket.socket, target: str, early: bytes) -> None:
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if early:
            upstream.sendall(early)
        self._relay(conn, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 30)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    if s is upstream:
                        client.sendall(data)
                        self._count(len(data))
                    else:
                        upstream.sendall(data)
        finally:
            upstream.close()

    def _forward(
        self,
        conn: socket.socket,
        method: str,
        target: str,
        version: str,
        headers: list[str],
        body: bytes,
    ) -> bool:
        """One absolute-form request; relays the response until upstream closes."""
        if not target.startswith("http://"):
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return False
        hostport, _, path = target[len("http://") :].partition("/")
        host, sep, port = hostport.rpartition(":")
        if not sep or "]" in port:
            host, port = hostport, "80"
        kept = [
            h
            for h in headers
            if h and not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))
        ]
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
        request = f"{method} /{path} {version}\r\n" + "".join(f"{h}\r\n" for h in kept)
        upstream.sendall(request.encode("latin-1") + b"Connection: close\r\n\r\n" + body)
        try:
            while True:
                data = upstream.recv(1 << 16)
                if not data:
                    break
                conn.sendall(data)
                self._count(len(data))
        finally:
            upstream.close()
        return True

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


class _Served:
    """A ``ThreadingHTTPServer`` (``_server``) answering from a daemon thread (``_thread``)
    while the ``with`` block runs."""

    _server: ThreadingHTTPServer
    _thread: threading.Thread

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Site(_Served):
    """An HTTP(S) server on ``host`` serving fixed paths (Range-aware), e.g. a Glance-shaped
    ``/v2/images/ID`` record plus the image itself. ``requests`` lists the paths asked for."""

    def __init__(
        self,
        routes: dict[str, bytes],
        *,
        context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        redirects: dict[str, str] | None = None,
    ) -> None:
        site = self
        self.requests: list[str] = []
        self.routes = routes
        moved = redirects or {}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                site.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                if path in moved:
                    self.send_response(302)
                    self.send_header("Location", moved[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = site.routes.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(body)
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and "-" in rng:
                    a, _, b = rng[6:].partition("-")
                    start = int(a)
                    end = min(int(b) + 1, len(body)) if b else len(body)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                self.wfile.write(body[start:end])

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def server_bind(self) -> None:
                self.socket.bind(self.server_address)
                self.server_address = self.socket.getsockname()

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, addr = self.socket.accept()
                if context is None:
                    return sock, addr
                return context.wrap_socket(sock, server_side=True), addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # refused handshakes are the point of some tests

        self._server = Server((host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        scheme = "https" if context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.base = f"{scheme}://{shown}:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])


class GlanceCounter(_Served):
    """A reverse proxy in front of the real Glance that relays every request and records
    ``(method, path)``: how many requests a node makes of Glance, measured on the wire."""

    def __init__(self, upstream: str) -> None:
        target = urllib.parse.urlsplit(upstream)
        host, port = target.hostname or "127.0.0.1", target.port or 80
        counter = self
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                with counter._lock:
                    counter.requests.append((self.command, self.path.split("?", 1)[0]))
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                skip = {"host", "connection", "content-length", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in skip:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def of_image(self, image_id: str) -> list[tuple[str, str]]:
        """The requests about one image's record (GET, PATCH, ...), in order."""
        path = f"/v2/images/{image_id}"
        with self._lock:
            return [r for r in self.requests if r[1].rstrip("/") == path]


def glance_routes(record: dict[str, Any], image: bytes) -> dict[str, bytes]:
    """Routes of a Glance-shaped site: the record and the image at ``/img.raw`` and at
    Glance's own ``/v2/images/ID/file``."""
    rid = record["id"]
    return {
        f"/v2/images/{rid}": json.dumps(record).encode(),
        f"/v2/images/{rid}/file": image,
        "/img.raw": image,
    }
