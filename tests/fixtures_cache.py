"""``locpick serve`` as a real subprocess on a free loopback port, for the cache tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from helpers import cli_env


class ServeProcess:
    """``python -m locpick serve --cache-dir DIR --bind 127.0.0.1:PORT``; stop() ends it."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        bind: str = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        args: tuple[str, ...] = (),
    ) -> None:
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
                *args,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=cli_env(env),
        )
        self.url = ""
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            if "serving cache on " in line:
                self.url = line.rsplit("serving cache on ", 1)[1].strip()
                return
        self.stop()
        raise RuntimeError(f"locpick serve did not start (exit {self.proc.returncode})")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def image_url(self, image_id: str) -> str:
        return f"{self.url}/images/{image_id}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
