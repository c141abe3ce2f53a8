"""Run the harness by hand: ``PYTHONPATH=tests python -m harness COMMAND ...``.

Each ``start-*`` prints the service's URL as its last line and leaves the service running
(pids in WORKDIR); ``stop WORKDIR`` stops whatever runs there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import glance, keystone, keystone_api, procs, seed, swift
from harness.venvs import HarnessError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("start-keystone", "start-glance", "start-swift"):
        s = sub.add_parser(name)
        s.add_argument("workdir", type=Path)
        s.add_argument("--port", type=int)
        if name == "start-glance":
            s.add_argument("--keystone", metavar="AUTH_URL", help="run behind this Keystone")
    sub.add_parser("stop").add_argument("workdir", type=Path)
    t = sub.add_parser("token", help="an admin token (or --user/--password/--project)")
    t.add_argument("auth_url")
    for opt in ("--user", "--password", "--project"):
        t.add_argument(opt)
    r = sub.add_parser("register-image-endpoint")
    r.add_argument("auth_url")
    r.add_argument("glance_url")
    s = sub.add_parser("seed-image", help="upload FILE (fs1), copy it, add http locations")
    s.add_argument("endpoint")
    s.add_argument("file", type=Path)
    s.add_argument("--copy-to-store", action="append", default=[])
    s.add_argument("--http-location", action="append", default=[])
    s.add_argument("--visibility")
    s.add_argument("--token")
    a = p.parse_args(argv)
    try:
        if a.cmd == "start-keystone":
            url, _ = keystone.start(a.workdir.absolute(), a.port or procs.free_port())
        elif a.cmd == "start-glance":
            auth = "keystone" if a.keystone else "noauth"
            port = a.port or procs.free_port()
            url, _ = glance.start(a.workdir.absolute(), port, auth=auth, keystone_url=a.keystone)
        elif a.cmd == "start-swift":
            port = a.port or procs.free_port(4, swift.cached_ring_ports())
            url, _ = swift.start(a.workdir.absolute(), port)
        elif a.cmd == "stop":
            for service in (glance, keystone, swift):
                service.stop(a.workdir.absolute())
            return 0
        elif a.cmd == "token":
            url = keystone_api.token(a.auth_url, a.user, a.password, a.project)
        elif a.cmd == "register-image-endpoint":
            url = keystone_api.register_endpoint(a.auth_url, "glance", "image", a.glance_url)
        else:
            url = seed.seed_image(
                a.endpoint,
                a.file,
                http_locations=[(u, {}) for u in a.http_location],
                copy_to_stores=a.copy_to_store,
                token=a.token,
                visibility=a.visibility,
            )
    except HarnessError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
