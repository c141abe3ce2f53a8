"""Ports, background servers in their own process group, and waiting for them to answer."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness.venvs import HarnessError, tail

HOST = "127.0.0.1"

#: Opens loopback URLs directly: a proxy from the environment (http_proxy, ...) is ignored.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a service: ours without proxy settings (the services talk to
    loopback only), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.update(extra or {})
    return env


# Popen objects of the servers this process started, so that stopping them also reaps them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(block: int = 1, preferred: Sequence[int] = (), tries: int = 500) -> int:
    """A port P with P..P+block-1 free, below Linux's ephemeral range (32768+) so that
    outgoing connections cannot take it between this check and the server's bind."""
    rnd = random.SystemRandom()
    for port in [*preferred, *(rnd.randrange(20000, 32000 - block) for _ in range(tries))]:
        if all(port_free(port + i) for i in range(block)):
            return port
    raise HarnessError(f"no free block of {block} port(s) found")


def process_group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields[0] = state, fields[2] = pgrp
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log: Path, pidfile: Path) -> int:
    """Start ``argv`` in a new session (so it leads its own process group), output to
    ``log``, pid written to ``pidfile``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=service_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive."""
    pid = pid_in(pidfile)
    return pid if pid is not None and alive(pid) else None


def alive(pid: int) -> bool:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _cmdline_has(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_group(pid: int, marker: str, grace: float = 15.0) -> None:
    """SIGTERM to the process group ``pid`` leads (servers are started with their own
    session, so pgid == pid), SIGKILL to what is left after ``grace`` seconds; reaps our
    own children. A leader that already died still gets its leftover workers killed. A
    group none of whose command lines contain ``marker`` (the WORKDIR) is left alone: a
    stale pid file may name someone else's process by now."""
    if pid not in _CHILDREN and not any(_cmdline_has(p, marker) for p in process_group_pids(pid)):
        return

    def signal_all(sig: signal.Signals) -> None:
        with contextlib.suppress(OSError):
            if process_group_pids(pid):
                os.killpg(pid, sig)
            elif pid in _CHILDREN and alive(pid):
                os.kill(pid, sig)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (alive(pid) or process_group_pids(pid)):
        time.sleep(0.1)
    signal_all(signal.SIGKILL)
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    deadline = time.monotonic() + 10
    while process_group_pids(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def stop_pidfile(pidfile: Path, workdir: Path, grace: float = 15.0) -> None:
    """Stop the process group whose leader's pid is in ``pidfile`` (see :func:`stop_group`;
    ``workdir`` is the marker) and remove the pid file."""
    pid = pid_in(pidfile)
    if pid is not None:
        stop_group(pid, str(workdir), grace=grace)
    pidfile.unlink(missing_ok=True)


def pid_in(pidfile: Path) -> int | None:
    """The pid written in ``pidfile``, alive or not."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 3) -> int:
    """Status of a GET (0 when nothing answers)."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with DIRECT.open(req, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)
    except (OSError, ValueError):
        return 0


def wait_until(
    ready: Callable[[], bool], pids: Sequence[int], timeout: float, what: str, logs: Sequence[Path]
) -> None:
    """Poll ``ready`` until true; fail early (with the logs' tails) if a server died."""
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in pids if not alive(p)]
        if dead or time.monotonic() > deadline:
            why = f"pid {dead[0]} exited" if dead else f"no answer within {timeout:.0f}s"
            raise HarnessError(f"{what}: {why}\n" + log_tails(logs))
        time.sleep(0.2)


def log_tails(logs: Sequence[Path], n: int = 25) -> str:
    parts = []
    for log in logs:
        if log.exists():
            parts.append(f"--- {log}\n{tail(log.read_text(errors='replace'), n)}")
    return "\n".join(parts)


def run_logged(
    argv: Sequence[str], log: Path, what: str, env: Mapping[str, str] | None = None
) -> None:
    """Run a set-up command to completion, its output in ``log``; raise with the tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        r = subprocess.run(
            list(argv),
            env=service_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=600,
        )
    if r.returncode != 0:
        raise HarnessError(f"{what} failed (exit {r.returncode}):\n" + log_tails([log], 30))


def gunicorn_argv(venv: Path, workdir: Path, port: int, app: str, pythonpath: Path) -> list[str]:
    """gunicorn on 127.0.0.1:PORT, one worker with 4 threads, logs in WORKDIR/log; no
    control socket (recent gunicorns share one in ~/.gunicorn between all instances)."""
    argv = [
        str(venv / "bin" / "gunicorn"),
        "-b",
        f"{HOST}:{port}",
        "-w",
        "1",
        "--threads",
        "4",
        "--timeout",
        "300",
        "--graceful-timeout",
        "5",
        "--error-logfile",
        str(workdir / "log" / "gunicorn.log"),
        "--access-logfile",
        str(workdir / "log" / "access.log"),
        "--pythonpath",
        str(pythonpath),
    ]
    flag = venv / ".locpick-gunicorn-control-socket"
    if not flag.exists():
        r = subprocess.run(
            [str(venv / "bin" / "gunicorn"), "--help"], capture_output=True, text=True, check=False
        )
        flag.write_text("yes\n" if "--no-control-socket" in r.stdout else "no\n")
    if flag.read_text().strip() == "yes":
        argv.append("--no-control-socket")
    return [*argv, app]
