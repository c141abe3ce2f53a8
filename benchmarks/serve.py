#!/usr/bin/env python3
"""`locpick serve` vs nginx serving the same cached image, over loopback, in one run.

    python benchmarks/serve.py [--size-mib 512] [--rounds 5] [--peers 32] [--max-clients 8]

Puts a random N-MiB image into a node cache (locpick.cache.store.NodeCache), then serves that one
file both ways: `locpick serve --cache-dir` (aiohttp, sendfile) and a private nginx (sendfile
on, 2 workers, access_log off; the config of benchmarks/throughput.py) whose root is the
cache's images directory. Timed, interleaved per round, best of R kept:

  full      curl -s -o /dev/null URL                         (one connection, whole file)
  ranges8   8 curls at once, each -r over 1/8 of the file   (what parallel readers do)
  small1k  one curl, 1000 x 4 KiB ranges over one keep-alive connection (per-request cost)

Prints seconds, MB/s and the ratio serve/nginx per row; then the cost of the operator
endpoints: the same rows against `locpick serve` with /metrics and /status on (the default,
every response counted) and with `--no-metrics --no-status`, ratio on/off (goal: within 5 %).

Then a node under load: P peers (curl --retry, which honours 503 + Retry-After) each fetch the
whole image from `locpick serve` with ``[serve] max_clients`` M, and with M = P (no cap), while
the node itself runs `locpick download` of another image (--own-mib) from nginx (and, with
--max-rate-mbps R, a row with ``[serve] max_rate``). Rows: served
MB/s (P x size / wall time of all peers), and the node's own download time while serving vs
alone (the cost its neighbours impose on it). Writes results/serve.json.
Stdlib + curl + nginx (apt-get install nginx curl if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from throughput import MiB, Nginx, make_image  # noqa: E402

from locpick.cache.store import NodeCache  # noqa: E402
from locpick.models import Image  # noqa: E402

RESULTS = HERE / "results" / "serve.json"
IMAGE_ID = "bench-serve-img"


def start_serve(
    cache_dir: Path, *extra: str, config: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LOCPICK_CONFIG": str(ROOT / "tests" / "empty-config.toml"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locpick",
            "serve",
            "--cache-dir",
            str(cache_dir),
            "--bind",
            "127.0.0.1:0",
            *(["--config", str(config)] if config else []),
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "serving cache on " in line:
            return proc, line.rsplit("serving cache on ", 1)[1].strip()
    sys.exit("locpick serve did not start")


def time_full(url: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - t0


def time_ranges(url: str, size: int, n: int = 8) -> float:
    part = size // n
    cmds = []
    for i in range(n):
        end = size - 1 if i == n - 1 else (i + 1) * part - 1
        cmds.append(["curl", "-sf", "-o", "/dev/null", "-r", f"{i * part}-{end}", url])
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c) for c in cmds]
    if any(p.wait() != 0 for p in procs):
        sys.exit(f"a range request to {url} failed")
    return time.perf_counter() - t0


SMALL_N, SMALL_CHUNK = 1000, 4 << 10
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def time_small(url: str, n: int = SMALL_N, chunk: int = SMALL_CHUNK) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["curl", "-sf", "-r", f"0-{chunk - 1}", *(["-o", "/dev/null", url] * n)], check=True
    )
    return time.perf_counter() - t0


ROWS = ("full", "ranges8", "small1k")


def time_row(row: str, url: str, size: int) -> float:
    if row == "full":
        return time_full(url)
    if row == "ranges8":
        return time_ranges(url, size)
    return time_small(url)


def own_download(work: Path, metadata: Path, env: dict[str, str]) -> float:
    """Seconds for this node's own ``locpick download`` (from nginx, no cache)."""
    dest = work / "own.img"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "locpick", "download", "own-img", str(dest), "--metadata",
         str(metadata), "--no-progress"],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    dest.unlink()
    return elapsed


def peers_row(
    work: Path,
    cache: NodeCache,
    size: int,
    peers: int,
    max_clients: int,
    own_meta: Path,
    max_rate: int = 0,
) -> dict[str, float]:
    """P curl peers against a serve with ``max_clients``, the node's own download meanwhile."""
    cfg = work / f"serve-{max_clients}-{max_rate}.toml"
    cfg.write_text(
        f"[serve]\nmax_clients = {max_clients}\nmax_rate = {max_rate}\nretry_after = 1\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCPICK_CONFIG": str(cfg)}
    serve, base = start_serve(work / "cache", config=cfg)
    url = f"{base}/images/{IMAGE_ID}/{cache.token(IMAGE_ID)}"
    try:
        alone = own_download(work, own_meta, env)
        cmd = ["curl", "-sf", "-o", "/dev/null", "--retry", "1000", "--retry-max-time", "600"]
        t0 = time.perf_counter()
        procs = [subprocess.Popen([*cmd, url]) for _ in range(peers)]
        time.sleep(0.2)  # the peers are connected and transferring
        loaded = own_download(work, own_meta, env)
        if any(p.wait() != 0 for p in procs):
            sys.exit("a peer failed")
        served = time.perf_counter() - t0
    finally:
        serve.terminate()
        serve.wait(10)
    return {
        "served_s": served,
        "served_MBps": peers * size / served / 1e6,
        "own_alone_s": alone,
        "own_loaded_s": loaded,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peers", type=int, default=32)
    ap.add_argument("--max-clients", type=int, default=8)
    ap.add_argument("--own-mib", type=int, default=64)
    ap.add_argument("--max-rate-mbps", type=int, default=0, help="also a row with max_rate")
    args = ap.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="locpick-bench-serve-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        src = work / "src.raw"
        md5, sha = make_image(src, args.size_mib)
        cache = NodeCache(work / "cache")
        image = Image(IMAGE_ID, size, checksum=md5, os_hash_algo="sha512", os_hash_value=sha)
        cache.add_file(image, src)
        src.unlink()
        nginx = Nginx(cache.images, work / "nginx")
        nginx.start()
        serve, base = start_serve(work / "cache")
        plain, plain_base = start_serve(work / "cache", "--no-metrics", "--no-status")
        urls = {
            "serve": f"{base}/images/{IMAGE_ID}/{cache.token(IMAGE_ID)}",
            "nginx": f"http://127.0.0.1:{nginx.port}/{IMAGE_ID}",
            "plain": f"{plain_base}/images/{IMAGE_ID}/{cache.token(IMAGE_ID)}",
        }
        try:
            for u in urls.values():  # warm-up, and all really serve the file
                time_full(u)
            best: dict[str, dict[str, float]] = {row: {} for row in ROWS}
            cpu: dict[str, dict[str, float]] = {row: {} for row in ROWS}
            pids = {"serve": serve.pid, "plain": plain.pid}
            for i in range(args.rounds):
                order = list(urls.items())
                for name, url in order if i % 2 == 0 else reversed(order):
                    for row in ROWS:
                        c0 = cpu_seconds(pids[name]) if name in pids else 0.0
                        t = time_row(row, url, size)
                        best[row][name] = min(best[row].get(name, float("inf")), t)
                        if name in pids:
                            used = cpu_seconds(pids[name]) - c0
                            cpu[row][name] = min(cpu[row].get(name, float("inf")), used)
            metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
            served = sum(
                s.value
                for f in text_string_to_metric_families(metrics)
                for s in f.samples
                if s.name == "locpick_serve_requests_total" and s.labels["image"] == IMAGE_ID
            )
            for proc in (serve, plain):
                proc.terminate()
                proc.wait(10)
            own = cache.images.parent.parent / "nginx-root"
            own.mkdir()
            omd5, osha = make_image(own / "own.img", args.own_mib)
            own_nginx = Nginx(own, work / "nginx-own")
            own_nginx.start()
            record = {
                "id": "own-img", "status": "active", "size": args.own_mib * MiB,
                "checksum": omd5, "os_hash_algo": "sha512", "os_hash_value": osha,
                "locations": [
                    {"url": f"http://127.0.0.1:{own_nginx.port}/own.img", "metadata": {}}
                ],
            }  # fmt: skip
            own_meta = work / "own.json"
            own_meta.write_text(json.dumps(record))
            try:
                loads = {
                    f"peers{args.peers}_mc{mc}": peers_row(
                        work, cache, size, args.peers, mc, own_meta
                    )
                    for mc in (args.max_clients, args.peers)
                }
                if args.max_rate_mbps:
                    rate = args.max_rate_mbps * 1_000_000
                    loads[f"peers{args.peers}_mc{args.max_clients}_rate"] = peers_row(
                        work, cache, size, args.peers, args.max_clients, own_meta, rate
                    )
            finally:
                own_nginx.stop()
        finally:
            for proc in (serve, plain):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
            nginx.stop()
    print(f"\n{args.size_mib} MiB, best of {args.rounds} interleaved rounds (curl -> /dev/null)")
    cols = ("serve s", "nginx s", "serve MB/s", "nginx MB/s", "ratio")
    print(f"{'row':<9} " + " ".join(f"{c:>11}" for c in cols))
    out: dict[str, object] = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "rows": {},
    }
    for row, t in best.items():
        ratio = t["serve"] / t["nginx"]
        moved = SMALL_N * SMALL_CHUNK if row == "small1k" else size
        print(
            f"{row:<9} {t['serve']:11.3f} {t['nginx']:11.3f} {moved / t['serve'] / 1e6:11.0f} "
            f"{moved / t['nginx'] / 1e6:11.0f} {ratio:11.2f}"
        )
        out["rows"][row] = {"serve_s": t["serve"], "nginx_s": t["nginx"], "ratio": ratio}  # type: ignore[index]
    print("ratio = serve seconds / nginx seconds (1.00 = as fast as nginx)")
    print("\noperator endpoints: serve (default: /metrics + /status) vs --no-metrics --no-status")
    cols = ("on s", "off s", "on/off", "on cpu ms", "off cpu ms", "cpu on/off")
    print(f"{'row':<9} " + " ".join(f"{c:>11}" for c in cols))
    for row, t in best.items():
        cost = t["serve"] / t["plain"]
        c = cpu[row]
        cpu_cost = c["serve"] / c["plain"] if c["plain"] > 0 else float("nan")
        print(
            f"{row:<9} {t['serve']:11.3f} {t['plain']:11.3f} {cost:11.3f} "
            f"{c['serve'] * 1e3:11.0f} {c['plain'] * 1e3:11.0f} {cpu_cost:11.3f}"
        )
        out["rows"][row].update(  # type: ignore[index]
            plain_s=t["plain"],
            metrics_cost=cost,
            serve_cpu_s=c["serve"],
            plain_cpu_s=c["plain"],
            metrics_cpu_cost=cpu_cost,
        )
    print("wall times on a shared 2-core box are noisy; the server's own CPU seconds (best")
    print("of the rounds, from /proc/PID/stat) are the steadier measure of the per-request cost")
    print(f"(/metrics counted {served:.0f} image responses of the metrics-on server)")
    print(
        f"\n{args.peers} peers fetch the {args.size_mib} MiB image at once; the node downloads "
        f"{args.own_mib} MiB itself meanwhile"
    )
    cols = ("served s", "served MB/s", "own alone s", "own loaded s", "own ratio")
    print(f"{'row':<14} " + " ".join(f"{c:>12}" for c in cols))
    for row, r in loads.items():
        own_ratio = r["own_loaded_s"] / r["own_alone_s"]
        print(
            f"{row:<14} {r['served_s']:12.2f} {r['served_MBps']:12.0f} {r['own_alone_s']:12.2f} "
            f"{r['own_loaded_s']:12.2f} {own_ratio:12.2f}"
        )
        out["rows"][row] = {**r, "own_ratio": own_ratio}  # type: ignore[index]
    print("own ratio = the node's own download time while serving / alone")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
