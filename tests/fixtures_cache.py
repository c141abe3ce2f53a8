"""``locpick serve`` as a real subprocess on a free loopback port, for the cache tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from helpers import cli_env

from locpick.cache.store import NodeCache


class ServeProcess:
    """``python -m locpick serve --cache-dir DIR --bind 127.0.0.1:PORT``; stop() ends it."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        bind: str = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        config: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
        args: tuple[str, ...] = (),
        extra: Sequence[str] = (),
    ) -> None:
        self.cache_dir = cache_dir
        configured = ["--config", str(config)] if config is not None else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locpick",
                "serve",
                "--cache-dir",
                str(cache_dir),
                "--bind",
                bind,
                *configured,
                *args,
                *extra,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=cli_env(env),
            preexec_fn=preexec_fn,
        )
        self.url = ""
        self.log: list[str] = []
        self._drainer: threading.Thread | None = None
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            if "serving cache on " in line:
                self.url = line.rsplit("serving cache on ", 1)[1].strip()
                # Keep reading: a full stderr pipe would block the server's event loop.
                self._drainer = threading.Thread(target=self._drain, daemon=True)
                self._drainer.start()
                return
        self.stop()
        said = "".join(self.log[-5:]).strip()
        raise RuntimeError(f"locpick serve did not start (exit {self.proc.returncode}): {said}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def image_url(self, image_id: str) -> str:
        """The capability URL of ``image_id`` (what the node registers in Glance)."""
        return f"{self.url}/images/{image_id}/{NodeCache(self.cache_dir).token(image_id)}"

    def image_path(self, image_id: str) -> str:
        return self.image_url(image_id)[len(self.url) :]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=15)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_on_its_port(
    start: Callable[[], ServeProcess], move: Callable[[], None], tries: int = 4
) -> ServeProcess:
    """``start()`` a serve on the port its node was given; when another server of the run took
    that port between the free-port check and the bind, ``move()`` the node to another and
    start again (a node's public URL must be known before it serves, so port 0 will not do)."""
    for attempt in range(tries):
        try:
            return start()
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == tries - 1:
                raise
            move()
    raise AssertionError("not reached")
