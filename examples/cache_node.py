"""A node whose cache is a location: download into the node cache, serve it, register it.

Against Glance (an internal endpoint that allows changing locations, see README "Security")::

    OS_IMAGE_URL=http://glance-internal:9292 OS_AUTH_TOKEN=... \\
        python examples/cache_node.py IMAGE_ID --cache-dir /var/lib/locpick/cache \\
            --bind 0.0.0.0:8470 --public-url http://10.0.4.7:8470 --host node-7 --zone az1

downloads IMAGE_ID (or copies it from the cache), keeps a verified copy, serves the cache with
``locpick serve`` and adds the capability URL ``PUBLIC_URL/images/IMAGE_ID/TOKEN`` to the
image's locations with this node's topology; Ctrl-C stops serving (the location stays until
``locpick cache evict`` or ``reconcile`` removes it).

With no IMAGE_ID it shows the idea on 127.0.0.1 without Glance: node A downloads the demo
image into its cache and serves it; every origin is then stopped, and node B, given a record
that lists A's cache URL beside the dead origins, still gets the verified image, from A.

Only the public API is used (``import locpick``); the demo world (loopback origins) comes from
``locpick.cli.demo``, which has no public equivalent: it is a test fixture, not an API.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import locpick


def start_serve(cache_dir: str, bind: str) -> tuple[subprocess.Popen[str], str]:
    """``locpick serve`` in a child process; returns it and the URL it listens on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "locpick", "serve", "--cache-dir", cache_dir, "--bind", bind],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "serving cache on " in line:
            return proc, line.rsplit("serving cache on ", 1)[1].strip()
    raise SystemExit(f"locpick serve did not start (exit {proc.wait()})")


def node(args: argparse.Namespace) -> int:
    serve, url = start_serve(args.cache_dir, args.bind)
    public_url = args.public_url or url
    topology = {"region": args.region, "zone": args.zone, "rack": args.rack, "host": args.host}
    config = locpick.config_from_mapping(
        {
            "topology": {k: v for k, v in topology.items() if v},
            "cache": {"dir": args.cache_dir, "register": True, "public_url": public_url},
        }
    )
    try:
        with locpick.Client(config=config) as client:
            dest = args.dest or os.path.join(args.cache_dir, f"{args.image_id}.out")
            result = client.download(args.image_id, dest, register=True)
            print(f"{result.method}: {result.bytes} bytes from {result.source_url}")
        with locpick.Cache(config=config) as cache:
            entry = next((e for e in cache.entries() if e.image_id == args.image_id), None)
            registered = entry is not None and entry.registered_url is not None
            print(f"serving {args.image_id} at {public_url}/images/{args.image_id}/<token>")
            print(f"registered in Glance: {'yes' if registered else 'no (see the warning above)'}")
        print("Ctrl-C to stop serving")
        serve.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.terminate()
        serve.wait()
    return 0


def demo() -> int:
    from locpick.cli.demo import DEMO_IMAGE_ID, build_world

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache_dir = str(work / "cache-a")
        with ExitStack() as origins:
            metadata, _config, data = build_world(origins, work, size=8 << 20)
            a = locpick.config_from_mapping({"cache": {"dir": cache_dir}})
            with locpick.Client(config=a) as client:
                r = client.download(DEMO_IMAGE_ID, work / "a.img", metadata=metadata)
            print(f"node A: {r.method} from {r.source_url}, kept in its cache")
        print("node A: every origin is now stopped")
        serve, url = start_serve(cache_dir, "127.0.0.1:0")
        try:
            record = json.loads(metadata.read_text())
            with locpick.Cache(cache_dir) as cache:
                a_url = cache.location_url(DEMO_IMAGE_ID, base=url)
            meta = {"host": "node-a", "locpick_cache": "true"}
            record["locations"].append({"url": a_url, "metadata": meta})
            with locpick.Client() as client:
                r = client.download(DEMO_IMAGE_ID, work / "b.img", metadata=record)
            same = (work / "b.img").read_bytes() == data
            print(f"node B: {r.method} from {r.source_url}, verified {r.verified}, same: {same}")
            for attempt in r.attempts:
                if attempt.outcome != "ok":
                    print(f"  {attempt.outcome}: {attempt.url}: {attempt.error}")
            from_a = r.source_url.startswith(f"{url}/images/{DEMO_IMAGE_ID}/")
            return 0 if same and from_a else 3
        finally:
            serve.terminate()
            serve.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_id", nargs="?", metavar="IMAGE_ID")
    parser.add_argument("--dest", help="where to put the image (default: beside the cache)")
    parser.add_argument("--cache-dir", default="/var/lib/locpick/cache")
    parser.add_argument("--bind", default="127.0.0.1:8470")
    parser.add_argument("--public-url", help="how other nodes reach this serve (default: bind)")
    for level in ("region", "zone", "rack", "host"):
        parser.add_argument(f"--{level}")
    args = parser.parse_args()
    return node(args) if args.image_id else demo()


if __name__ == "__main__":
    sys.exit(main())
