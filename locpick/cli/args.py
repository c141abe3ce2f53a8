"""The ``locpick`` command line: its parser (``--help`` text) and the Client that parsed
arguments configure. Imports nothing heavy: ``locpick --help`` loads no transport."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from locpick.client import Client


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image source (one of)")
    g.add_argument("--metadata", metavar="FILE", help="Glance-v2-shaped image JSON")
    g.add_argument("--glance-url", metavar="URL", help="Glance endpoint (else $OS_IMAGE_URL)")
    g.add_argument("--token", metavar="TOKEN", help="Keystone token (else $OS_AUTH_TOKEN)")
    p.add_argument("--config", metavar="FILE", help="TOML config (else $LOCPICK_CONFIG)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--verbose", "-v", action="store_true", help="log what locpick does")
    _log_format_arg(p)
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do NOT verify TLS certificates (warns on every use; for test clouds only)",
    )


def _log_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per log line (time, level, event, image, host, bytes, ...)",
    )


def _prefetch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prefetch")
    g.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="prefetch every active image with this Glance tag (repeat: all of them)",
    )
    g.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_key_value,
        help="prefetch every active image with this Glance property (repeat: all of them)",
    )
    g.add_argument(
        "--jobs", type=int, default=2, metavar="N", help="images fetched at once (default 2)"
    )
    g.add_argument(
        "--max-rate",
        type=int,
        default=0,
        metavar="BYTES_PER_S",
        help="cap on all prefetch transfers together, bytes/s (default 0: none)",
    )
    g.add_argument(
        "--register",
        action="store_true",
        default=None,
        help="publish each cached image as a location in Glance (else [cache] register)",
    )


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locpick", description="Fetch a VM image from the best of its many copies."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("download", help="fetch the image to DEST, verified")
    d.add_argument("image_id", metavar="IMAGE_ID")
    d.add_argument("dest", metavar="DEST")
    _source_args(d)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept an image without any hash (size check only)",
    )
    d.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="node cache: use a verified cached copy, keep this one (else [cache] dir)",
    )
    d.add_argument(
        "--register",
        action="store_true",
        default=None,
        help="publish the cached copy as a location in Glance ([cache] public_url)",
    )
    d.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write a node-exporter textfile (Prometheus format) about this download, atomically",
    )

    r = sub.add_parser("rank", help="score every location without downloading")
    r.add_argument("image_id", metavar="IMAGE_ID")
    _source_args(r)

    v = sub.add_parser("verify", help="check every replica's size and hash")
    v.add_argument("image_id", metavar="IMAGE_ID")
    _source_args(v)
    v.add_argument("--quick", action="store_true", help="reachability and size only")
    v.add_argument(
        "--prune",
        action="store_true",
        help="remove missing/mismatched locations from Glance (dry run without --yes)",
    )
    v.add_argument("--yes", action="store_true", help="with --prune: really remove them")

    s = sub.add_parser("serve", help="serve the node cache read-only over HTTP (with Range)")
    s.add_argument("--cache-dir", metavar="DIR", help="the node cache (else [cache] dir)")
    s.add_argument("--bind", metavar="ADDR:PORT", default=None, help="default 127.0.0.1:8470")
    s.add_argument("--config", metavar="FILE", help="TOML config (else $LOCPICK_CONFIG)")
    s.add_argument("--verbose", "-v", action="store_true", help="log what locpick does")
    _log_format_arg(s)
    s.add_argument("--no-metrics", action="store_true", help="no /metrics endpoint")
    s.add_argument("--no-status", action="store_true", help="no /status page")
    s.add_argument(
        "--glance-url", metavar="URL", help="Glance, to renew leases (else $OS_IMAGE_URL)"
    )
    s.add_argument("--token", metavar="TOKEN", help="Keystone token (else $OS_AUTH_TOKEN)")
    s.add_argument(
        "--no-renew",
        action="store_true",
        help="do not renew (or deregister) this node's Glance locations",
    )

    c = sub.add_parser(
        "cache",
        help="list, evict, reconcile or prefetch the node cache; reap dead cache locations",
    )
    c.add_argument(
        "action",
        choices=("list", "evict", "reconcile", "reap", "rotate-secret", "prefetch"),
        metavar="reconcile|list|evict|reap|rotate-secret|prefetch",
    )
    c.add_argument(
        "image_ids",
        nargs="*",
        metavar="IMAGE_ID",
        help="evict: images to evict; reap: images to reap (default: every image listed); "
        "prefetch: images to fetch into the cache",
    )
    _prefetch_args(c)
    c.add_argument(
        "--dry-run", action="store_true", help="reap: say what would be removed, remove nothing"
    )
    c.add_argument("--all", action="store_true", help="evict: every cached image")
    c.add_argument("--cache-dir", metavar="DIR", help="the node cache (else [cache] dir)")
    _source_args(c)

    sub.add_parser("demo", help="start a local world of origins and show a ranked download")
    return parser


def client_for(args: argparse.Namespace) -> Client:
    """The Client of a command's ``--config``, ``--glance-url``, ``--token``, ``--insecure``."""
    from locpick.client import Client

    return Client(
        config=args.config,
        glance_url=args.glance_url,
        token=args.token,
        insecure=getattr(args, "insecure", False),
    )
