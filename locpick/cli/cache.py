"""The node-cache commands of ``locpick``: ``serve`` (the cache over HTTP, leases renewed)
and ``cache`` (list, evict, reconcile, reap, rotate-secret, prefetch)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from locpick.cli.format import print_json
from locpick.redact import redact_url

if TYPE_CHECKING:
    from locpick.admin import Cache, Fleet


def serve_command(args: argparse.Namespace) -> int:
    from locpick.cache.store import NodeCache
    from locpick.config.env import resolve_config
    from locpick.errors import ConfigError
    from locpick.serve.server import DEFAULT_BIND, announce, serve

    config = resolve_config(args.config)
    directory = args.cache_dir or config.cache.dir
    if not directory:
        raise ConfigError("serve: no node cache: give --cache-dir DIR or set [cache] dir")
    from locpick.serve.metrics import OpsOptions
    from locpick.serve.ops import Ops

    cache = NodeCache(directory, config.cache.max_bytes)
    ops = OpsOptions(metrics=not args.no_metrics, status=not args.no_status)
    cache.recover()
    if args.no_renew:
        return serve(cache, args.bind or DEFAULT_BIND, config=config.serve, ready=announce, ops=ops)
    from locpick.client import Client
    from locpick.serve.renew import Renewer

    with Client(config=config, glance_url=args.glance_url, token=args.token) as client:
        renewer = Renewer(client, cache)

        def ready(url: str) -> None:
            announce(url)
            renewer.start()

        def report_renewals(app_ops: Ops) -> None:
            renewer.observer = app_ops.metrics  # leases and renewals in /metrics and /status

        try:
            return serve(
                cache,
                args.bind or DEFAULT_BIND,
                config=config.serve,
                ready=ready,
                stopping=renewer.deregister,
                ops=ops,
                started=report_renewals,
            )
        finally:
            renewer.stop()


def cache_command(args: argparse.Namespace) -> int:
    from locpick.admin import Cache, Fleet
    from locpick.errors import InputError

    common = {
        "config": args.config,
        "glance_url": args.glance_url,
        "token": args.token,
        "insecure": getattr(args, "insecure", False),
    }
    if args.action == "reap":
        with Fleet(**common) as fleet:
            return _reap(args, fleet)
    with Cache(args.cache_dir, **common) as cache:
        if args.action == "list":
            entries = cache.entries()
            if args.json:
                print_json([e.to_json() for e in reversed(entries)])
            else:
                for e in reversed(entries):
                    reg = redact_url(e.registered_url) if e.registered_url else "-"
                    print(f"{e.image_id}  {e.size:>14}  {e.algo}  registered: {reg}")
            return 0
        if args.action == "evict":
            if not args.image_ids and not args.all:
                raise InputError("cache evict: name IMAGE_IDs or give --all")
            ids = [e.image_id for e in cache.entries()] if args.all else args.image_ids
            result = cache.evict(ids)
            for image_id in result.missing:
                print(f"locpick: {image_id}: not in the cache", file=sys.stderr)
            if args.json:
                print_json(result.to_json())
            else:
                for image_id in result.evicted:
                    print(f"evicted {image_id}")
            return 3 if result.warnings else 0
        if args.action == "prefetch":
            return _prefetch(args, cache)
        done = cache.rotate_secret() if args.action == "rotate-secret" else cache.reconcile()
        if args.json:  # "actions": one line each (as before); "changes": the values
            print_json({"actions": [str(a) for a in done], "changes": [a.to_json() for a in done]})
        else:
            print("\n".join(str(a) for a in done) if done else "cache and Glance agree")
        return 0


def _reap(args: argparse.Namespace, fleet: Fleet) -> int:
    """``cache reap``: one line per image (or JSON), exit 3 when a removal failed."""
    results = fleet.reap(args.image_ids, dry_run=args.dry_run, cache_dir=args.cache_dir)
    if args.json:
        print_json({"images": [r.to_json() for r in results]})
    else:
        for r in results:
            p = r.prune
            verb = "would remove" if p.dry_run else "removed"
            done = p.remove if p.dry_run else p.removed
            print(f"{r.image_id}: {verb} {len(done)}")
            for url in done:
                print(f"  - {url}")
            for note in p.notes:
                print(f"  note: {note}")
        if not results:
            print("no locpick cache locations found")
    failed = any(
        not r.prune.dry_run and len(r.prune.removed) < len(r.prune.remove) for r in results
    )
    return 3 if failed else 0


def _prefetch(args: argparse.Namespace, cache: Cache) -> int:
    """``cache prefetch``: a line per image as it changes (stderr), then a summary or JSON;
    exit 3 when an image could not be cached."""
    from locpick.cache.prefetch import PrefetchImage

    live = not args.json and sys.stderr.isatty()

    def show(row: PrefetchImage) -> None:
        if row.status == "fetching" and row.bytes and not live:
            return  # byte counts only on a terminal
        size = f"/{row.size}" if row.size is not None else ""
        done = f" {row.bytes}{size} bytes" if row.bytes else ""
        error = f": {row.error}" if row.error else ""
        if not args.json:
            print(f"prefetch: {row.image_id} {row.status}{done}{error}", file=sys.stderr)

    report = cache.prefetch(
        args.image_ids,
        tags=args.tag,
        properties=args.property,
        register=args.register,
        jobs=args.jobs,
        max_rate=args.max_rate,
        progress=show,
    )
    if args.json:
        print_json(report.to_json())
    else:
        counts = {s: sum(i.status == s for i in report.images) for s in ("cached", "fetched")}
        failed = [i for i in report.images if i.status == "failed"]
        print(
            f"{len(report.images)} image(s): {counts['fetched']} fetched, "
            f"{counts['cached']} already cached, {len(failed)} failed"
        )
        for row in failed:
            print(f"  failed: {row.image_id}: {row.error}")
    return 0 if report.ok else 3
