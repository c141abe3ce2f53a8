#!/usr/bin/env python3
"""Throughput benchmark: locpick vs curl / aria2c / a shell pipeline, over loopback.

    python benchmarks/throughput.py [--size-mib 1024] [--rounds 5] [--locpick-cmd locpick]

Serves a random N-MiB file with a private nginx on 127.0.0.1 (sendfile on,
access_log off), writes a Glance-v2-shaped metadata JSON for it, then times,
interleaved per round (best of R kept), downloads to /dev/shm:

  curl            curl -s -o /dev/shm/x URL
  sha512          hashlib.sha512 over the source file (page cache, 8 MiB blocks, in-process)
  aria2c          aria2c -x1 -s1 ... (no checksum)
  aria2c+sha512   the same with --checksum=sha-512=HEX
  pipe            bash -o pipefail -c 'curl -s URL | tee /dev/shm/x | sha512sum'
  proto[:V]       benchmarks/proto_fastpath.py (the fast data path prototype)
  locpick         <locpick-cmd> download bench-img /dev/shm/x --metadata META --json --no-progress

floor = max(curl, sha512): a verified download cannot beat the slower of
"move the bytes" and "hash the bytes".  Results go to benchmarks/results/throughput.json.
Only stdlib + subprocess; needs root for apt-get if nginx/aria2c/time are missing.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "throughput.json"
PROTO = HERE / "proto_fastpath.py"
SHM = Path("/dev/shm")
MiB = 1 << 20
GiB = 1 << 30
PROTO_VARIANTS = [
    "httpx_inline",
    "httpx_thread",
    "readinto",
    "readinto2",
    "splice_pread",
    "splice_mmap",
]


# --------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------


def _apt_install(pkgs: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", *pkgs]
    print(f"[setup] {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print("[setup] install failed; running apt-get update first", flush=True)
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    print(f"[setup] installed {' '.join(pkgs)}", flush=True)


def ensure_tools() -> None:
    need: list[str] = []
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        need.append("nginx")
    if not shutil.which("aria2c"):
        need.append("aria2")
    if not shutil.which("curl"):
        need.append("curl")
    if not Path("/usr/bin/time").exists():
        need.append("time")
    if need:
        if os.geteuid() != 0:
            sys.exit(f"missing {need} and not root: install them first")
        _apt_install(need)
    else:
        print("[setup] nginx, aria2c, curl, /usr/bin/time already installed", flush=True)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------
# fixture: random image + nginx + metadata
# --------------------------------------------------------------------------


def make_image(path: Path, size_mib: int) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha512()
    block = 8 * MiB
    left = size_mib * MiB
    t0 = time.perf_counter()
    with path.open("wb") as f:
        while left:
            b = os.urandom(min(block, left))
            md5.update(b)
            sha.update(b)
            f.write(b)
            left -= len(b)
    print(
        f"[setup] wrote {size_mib} MiB random image in {time.perf_counter() - t0:.1f}s", flush=True
    )
    return md5.hexdigest(), sha.hexdigest()


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 64; }}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 10;
    client_body_temp_path {prefix}/tmp_body;
    proxy_temp_path {prefix}/tmp_proxy;
    fastcgi_temp_path {prefix}/tmp_fcgi;
    uwsgi_temp_path {prefix}/tmp_uwsgi;
    scgi_temp_path {prefix}/tmp_scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    def __init__(self, root: Path, prefix: Path) -> None:
        self.root, self.prefix = root, prefix
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            NGINX_CONF.format(prefix=self.prefix, port=self.port, root=self.root, user=user)
        )
        self.proc = subprocess.Popen(
            [nginx_bin(), "-p", str(self.prefix), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                sys.exit(f"nginx exited: {err}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                print(f"[setup] nginx pid {self.proc.pid} on 127.0.0.1:{self.port}", flush=True)
                return
            time.sleep(0.05)
        self.stop()
        sys.exit("nginx did not come up")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGQUIT)  # graceful: master stops its workers
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # its own session: nginx master + workers
            p.wait()


# --------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------


TIME_BIN = "/usr/bin/time"
LAST_CPU: list[float | None] = [None]  # user+sys of the last run_wait4 child tree


def run_wait4(cmd: list[str]) -> tuple[float, int, int | None, str, str]:
    """Run cmd; return (seconds, rc, max RSS KiB, stdout, stderr); CPU s -> LAST_CPU.

    Max RSS comes from GNU time's %M when /usr/bin/time exists.  Otherwise from
    os.wait4's ru_maxrss, which over-reports small tools: Python 3.11 spawns
    with vfork, and a process's RSS high-water mark survives exec(), so the
    child starts with the harness's RSS.  (time's child is forked from time.)
    For `bash -c 'a | b | c'` it is the max over bash and its children.
    stdout/stderr go to temp files so there is no pipe to pump while waiting.
    """
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe, \
            tempfile.NamedTemporaryFile("r") as ft:  # fmt: skip
        use_time = Path(TIME_BIN).exists()
        full = [TIME_BIN, "-f", "%M %U %S", "-o", ft.name, *cmd] if use_time else cmd
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        rss: int | None = ru.ru_maxrss
        if use_time:
            try:
                m, u, sy = ft.read().strip().splitlines()[-1].split()
                rss = int(m)
                LAST_CPU[0] = float(u) + float(sy)
            except (ValueError, IndexError):
                rss = None
        else:
            LAST_CPU[0] = ru.ru_utime + ru.ru_stime
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
        return dt, p.returncode, rss, out, err


def sha512_file(path: Path) -> tuple[float, str]:
    buf = bytearray(8 * MiB)
    mv = memoryview(buf)
    h = hashlib.sha512()
    t0 = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(mv[:n])
    return time.perf_counter() - t0, h.hexdigest()


def cleanup(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        p.unlink()
    with contextlib.suppress(FileNotFoundError):
        (p.parent / (p.name + ".aria2")).unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--locpick-cmd", default="locpick")
    ap.add_argument(
        "--proto-variants",
        default=",".join(PROTO_VARIANTS),
        help="comma list of proto_fastpath variants to add as proto:V rows ('' for none)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    ensure_tools()
    if not SHM.is_dir():
        sys.exit("/dev/shm is required")
    work = Path(tempfile.mkdtemp(prefix="locpick-bench-"))
    atexit.register(shutil.rmtree, work, True)
    work.chmod(0o755)
    www = work / "www"
    www.mkdir()
    img = www / "img.raw"
    size = a.size_mib * MiB
    md5hex, sha512hex = make_image(img, a.size_mib)
    nginx = Nginx(www, work / "nginx")
    dest = SHM / f"locpick-bench-{os.getpid()}.out"
    atexit.register(cleanup, dest)
    try:
        nginx.start()
        url = f"http://127.0.0.1:{nginx.port}/img.raw"
        meta = work / "meta.json"
        meta.write_text(
            json.dumps(
                {
                    "id": "bench-img",
                    "size": size,
                    "checksum": md5hex,
                    "os_hash_algo": "sha512",
                    "os_hash_value": sha512hex,
                    "status": "active",
                    "locations": [{"url": url, "metadata": {}}],
                },
                indent=2,
            )
        )
        results = bench(a, url, img, size, sha512hex, meta, dest)
    finally:
        nginx.stop()
        cleanup(dest)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {a.out}")
    return 0


def bench(
    a: argparse.Namespace, url: str, img: Path, size: int, sha512hex: str, meta: Path, dest: Path
) -> dict[str, Any]:
    loc_cmd = shlex.split(a.locpick_cmd)
    have_locpick = bool(loc_cmd) and shutil.which(loc_cmd[0]) is not None
    if not have_locpick:
        print("locpick: not installed")
    variants = [v for v in a.proto_variants.split(",") if v]

    def check_file(expect_hash: bool) -> str | None:
        if not dest.exists():
            return "no output file"
        if dest.stat().st_size != size:
            return f"size {dest.stat().st_size} != {size}"
        return None

    # each row: name -> callable() -> (seconds, ok, maxrss_kib or None, extra)
    def r_curl() -> tuple[float, bool, int | None, dict[str, Any]]:
        dt, rc, rss, _, _ = run_wait4(["curl", "-s", "-o", str(dest), url])
        return dt, rc == 0 and check_file(False) is None, rss, {}

    def r_sha() -> tuple[float, bool, int | None, dict[str, Any]]:
        dt, hx = sha512_file(img)
        LAST_CPU[0] = dt
        return dt, hx == sha512hex, None, {}

    aria = [
        "aria2c", "-x1", "-s1", "--allow-overwrite=true", "--file-allocation=none", "-q",
        "-d", str(dest.parent), "-o", dest.name,
    ]  # fmt: skip

    def r_aria() -> tuple[float, bool, int | None, dict[str, Any]]:
        dt, rc, rss, _, _ = run_wait4([*aria, url])
        return dt, rc == 0 and check_file(False) is None, rss, {}

    def r_aria_v() -> tuple[float, bool, int | None, dict[str, Any]]:
        dt, rc, rss, _, _ = run_wait4([*aria, f"--checksum=sha-512={sha512hex}", url])
        return dt, rc == 0 and check_file(False) is None, rss, {}

    def r_pipe() -> tuple[float, bool, int | None, dict[str, Any]]:
        sh = f"curl -s {shlex.quote(url)} | tee {shlex.quote(str(dest))} | sha512sum"
        dt, rc, rss, out, _ = run_wait4(["bash", "-o", "pipefail", "-c", sh])
        return dt, rc == 0 and out.split()[:1] == [sha512hex], rss, {}

    def r_proto(variant: str | None) -> Any:
        def run() -> tuple[float, bool, int | None, dict[str, Any]]:
            cmd = [sys.executable, str(PROTO), "--size", str(size), "--sha512", sha512hex]
            if variant:
                cmd += ["--variant", variant]
            dt, rc, rss, out, err = run_wait4([*cmd, url, str(dest)])
            extra: dict[str, Any] = {}
            try:
                j = json.loads(out.strip().splitlines()[-1])
                extra = {"inproc_s": j["seconds"], "variant": j["variant"]}
            except (ValueError, IndexError, KeyError):
                sys.stderr.write(err[-2000:])
            return dt, rc == 0 and check_file(True) is None, rss, extra

        return run

    def r_locpick() -> tuple[float, bool, int | None, dict[str, Any]]:
        cmd = [*loc_cmd, "download", "bench-img", str(dest), "--metadata", str(meta)]
        cmd += ["--json", "--no-progress"]
        dt, rc, rss, out, err = run_wait4(cmd)  # GNU time %M, else wait4 rusage
        if rc != 0:
            sys.stderr.write(f"locpick failed rc={rc}: {err[-2000:]}\n")
        return dt, rc == 0 and check_file(True) is None, rss, {"stdout": out[-500:]}

    rows: dict[str, Any] = {
        "curl": r_curl,
        "sha512": r_sha,
        "aria2c": r_aria,
        "aria2c+sha512": r_aria_v,
        "pipe": r_pipe,
        "proto": r_proto(None),
    }
    for v in variants:
        rows[f"proto:{v}"] = r_proto(v)
    if have_locpick:
        rows["locpick"] = r_locpick

    # warm-up (nginx, page cache of the source, /dev/shm pages)
    cleanup(dest)
    r_curl()
    cleanup(dest)
    r_sha()

    times: dict[str, list[float | None]] = {k: [] for k in rows}
    rss_k: dict[str, list[int | None]] = {k: [] for k in rows}
    extras: dict[str, list[dict[str, Any]]] = {k: [] for k in rows}
    for rnd in range(a.rounds):
        line = []
        for name, fn in rows.items():
            cleanup(dest)
            LAST_CPU[0] = None
            dt, ok, rss, extra = fn()
            extra["cpu_s"] = LAST_CPU[0]
            cleanup(dest)
            times[name].append(dt if ok else None)
            rss_k[name].append(rss)
            extras[name].append(extra)
            line.append(f"{name}={dt:.2f}{'' if ok else '(FAIL)'}")
        print(f"round {rnd + 1}/{a.rounds}: " + " ".join(line), flush=True)

    best = {k: min((t for t in v if t is not None), default=None) for k, v in times.items()}
    floor = max(best["curl"] or 0.0, best["sha512"] or 0.0)
    print()
    print(
        f"size {size / GiB:.2f} GiB, best of {a.rounds}; floor = max(curl, sha512) = {floor:.3f}s"
    )
    print("(cpu s = min user+sys of the client's process tree; nginx's own CPU not counted)")
    print(f"{'tool':<20} {'best s':>8} {'GiB/s':>7} {'/floor':>7} {'maxRSS MiB':>11} {'cpu s':>6}")
    table = []
    for name, b in best.items():
        rss_vals = [r for r in rss_k[name] if r is not None]
        rss_mib = max(rss_vals) / 1024 if rss_vals else None
        row = {
            "tool": name,
            "best_s": b,
            "gib_s": (size / GiB / b) if b else None,
            "ratio_floor": (b / floor) if b and floor else None,
            "max_rss_mib": rss_mib,
            "all_s": times[name],
        }
        inproc = [e.get("inproc_s") for e in extras[name] if e.get("inproc_s")]
        if inproc:
            row["best_inproc_s"] = min(inproc)
        cpus = [e["cpu_s"] for e in extras[name] if e.get("cpu_s") is not None]
        row["min_cpu_s"] = min(cpus) if cpus else None
        table.append(row)
        if b is None:
            print(f"{name:<20} {'FAIL':>8}")
            continue
        rs = f"{rss_mib:11.1f}" if rss_mib is not None else f"{'-':>11}"
        cs = f"{row['min_cpu_s']:6.2f}" if row["min_cpu_s"] is not None else f"{'-':>6}"
        print(f"{name:<20} {b:8.3f} {size / GiB / b:7.2f} {b / floor:7.2f} {rs} {cs}")

    peers = ["curl", "sha512", "aria2c", "aria2c+sha512", "pipe"]
    vs: dict[str, dict[str, float]] = {}
    for subject in ("locpick", "proto"):
        if best.get(subject):
            vs[subject] = {p: best[subject] / best[p] for p in peers if best.get(p)}
            print(
                f"\n{subject} vs peers (time ratio, <1 = faster): "
                + ", ".join(f"{p} {r:.2f}" for p, r in vs[subject].items())
            )
    if not have_locpick:
        print("\nlocpick: not installed (row skipped)")
    return {
        "size_bytes": size,
        "rounds": a.rounds,
        "floor_s": floor,
        "rows": table,
        "ratios_vs_peers": vs,
        "locpick_installed": have_locpick,
        "env": {
            "python": platform.python_version(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


if __name__ == "__main__":
    sys.exit(main())
