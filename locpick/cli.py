"""The ``locpick`` command: parse, call the API, print, exit with the contract's code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from locpick.client import Client
from locpick.errors import LocpickError
from locpick.models import Ranking, Result, VerifyReport
from locpick.redact import SCRUB, RedactingFilter, redact_url
from locpick.report import DownloadReport, Recorder

log = logging.getLogger("locpick")


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
        "cache", help="list, evict or reconcile the node cache; reap dead cache locations"
    )
    c.add_argument(
        "action",
        choices=("list", "evict", "reconcile", "reap", "rotate-secret"),
        metavar="reconcile|list|evict|reap|rotate-secret",
    )
    c.add_argument(
        "image_ids",
        nargs="*",
        metavar="IMAGE_ID",
        help="evict: images to evict; reap: images to reap (default: every image listed)",
    )
    c.add_argument(
        "--dry-run", action="store_true", help="reap: say what would be removed, remove nothing"
    )
    c.add_argument("--all", action="store_true", help="evict: every cached image")
    c.add_argument("--cache-dir", metavar="DIR", help="the node cache (else [cache] dir)")
    _source_args(c)

    sub.add_parser("demo", help="start a local world of origins and show a ranked download")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="locpick: %(message)s", stream=sys.stderr)
    for h in logging.getLogger().handlers:
        h.addFilter(RedactingFilter())
        if getattr(args, "log_format", "text") == "json":
            from locpick.logfmt import JsonFormatter

            h.setFormatter(JsonFormatter())
    try:
        handler = _COMMANDS[args.command]
        return handler(args)
    except LocpickError as exc:
        print(f"locpick: error: {SCRUB(str(exc))}", file=sys.stderr)
        for attempt in getattr(exc, "attempts", ()):
            if attempt.outcome != "ok":
                print(
                    SCRUB(f"locpick:   {attempt.outcome}: {attempt.url}: {attempt.error}"),
                    file=sys.stderr,
                )
        if getattr(args, "json", False) and getattr(exc, "attempts", None) is not None:
            _print_json({"error": SCRUB(str(exc)), "attempts": [a.to_json() for a in exc.attempts]})  # type: ignore[attr-defined]
        # Only the contract's codes: a LocationError reaching here (e.g. Glance unreachable)
        # means nothing could be delivered.
        return exc.exit_code if exc.exit_code in (2, 3) else 3
    except KeyboardInterrupt:
        print("locpick: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "verbose", False):
            log.exception("internal error")
        print(f"locpick: internal error: {type(exc).__name__}: {SCRUB(str(exc))}", file=sys.stderr)
        return 3


def _client(args: argparse.Namespace) -> Client:
    return Client(
        config=args.config,
        glance_url=args.glance_url,
        token=args.token,
        insecure=getattr(args, "insecure", False),
    )


def _emit(args: argparse.Namespace, value: Any, text: Callable[[Any], str]) -> None:
    """Print a result as the contract's JSON under ``--json``, else as text for people."""
    if args.json:
        _print_json(value.to_json())
    else:
        print(text(value))


def _print_json(doc: Any) -> None:
    print(SCRUB(json.dumps(doc, indent=2)))


def _download(args: argparse.Namespace) -> int:
    show = not args.json and not args.no_progress and sys.stderr.isatty()
    if args.metrics_file:
        from locpick.metrics import check_textfile_path

        check_textfile_path(args.metrics_file)
    recorder = Recorder(args.image_id)
    try:
        with _client(args) as client, _progress_bar(show) as progress:
            result = client.download(
                args.image_id,
                args.dest,
                metadata=args.metadata,
                allow_unverified=args.allow_unverified,
                progress=progress,
                cache_dir=args.cache_dir,
                register=args.register,
                recorder=recorder,
            )
    except BaseException as exc:
        if args.metrics_file:
            _write_metrics(args.metrics_file, recorder.report or recorder.fail(exc))
        raise
    report = recorder.report or recorder.finish(result)
    if args.metrics_file:
        _write_metrics(args.metrics_file, report)
    if args.json:
        doc = result.to_json()
        for key, value in report.json_extras().items():
            doc.setdefault(key, value)  # extends the contract's document, never overrides it
        _print_json(doc)
    else:
        _emit(args, result, format_result)
    return 0


def _write_metrics(path: str, report: DownloadReport) -> None:
    """Write the download's textfile; failing to is a warning (the image was delivered)."""
    from locpick.metrics import write_textfile

    try:
        write_textfile(path, report)
    except OSError as exc:
        log.warning("--metrics-file %s: not written (%s)", path, exc.strerror or exc)


def format_result(result: Result) -> str:
    rate = result.bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
    lines = [
        f"{result.dest}: {result.bytes} bytes via {result.method} from {result.source_url} "
        f"in {result.seconds:.2f}s ({rate:.1f} MB/s), verified: {result.verified or 'NO'}"
        + _shares(result),
    ]
    for a in result.attempts:
        if a.outcome != "ok":
            lines.append(f"  {a.outcome}: {a.url} ({a.error})")
    return "\n".join(lines)


def _shares(result: Result) -> str:
    """``; pieces from N locations: URL 12.3 MB at 45.6 MB/s, ...`` for a swarm download."""
    if len(result.sources) < 2:
        return ""
    parts = [
        f"{s.url} {s.bytes / 1e6:.1f} MB"
        + ("" if s.rate_bps is None else f" at {s.rate_bps / 1e6:.1f} MB/s")
        for s in result.sources
    ]
    return f"; pieces from {len(parts)} locations: " + ", ".join(parts)


@contextmanager
def _progress_bar(show: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    if not show:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("locpick", total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _rank(args: argparse.Namespace) -> int:
    with _client(args) as client:
        ranking = client.rank(args.image_id, metadata=args.metadata)
    _emit(args, ranking, format_ranking)
    return 0


def format_ranking(ranking: Ranking) -> str:
    """A table with the contract's columns, for people."""
    head = (
        "rank",
        "score_s",
        "usable",
        "latency_ms",
        "tcp/icmp_ms",
        "MB/s",
        "topology",
        "shared_fs",
        "history",
        "url / why",
    )
    rows: list[tuple[str, ...]] = []
    for s in ranking.scores:
        r = s.reasons
        why = r.error or "; ".join(r.notes)
        rows.append(
            (
                str(s.rank),
                "-" if s.score is None else f"{s.score:.3f}",
                "yes" if s.usable else "no",
                _ms(r.latency_ms),
                _ms(r.connect_ms) + "/" + _ms(r.icmp_ms),
                "-" if r.throughput_bps is None else f"{r.throughput_bps / 1e6:.1f}",
                r.topology or "-",
                r.shared_fs or "-",
                r.history or "-",
                f"{s.url}  [{why}]" if why else s.url,
            )
        )
    table = [head, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in table
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _verify(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.verify(
            args.image_id,
            metadata=args.metadata,
            quick=args.quick,
            prune=args.prune,
            yes=args.yes,
        )
    _emit(args, report, format_report)
    return 0 if report.ok else 3


def format_report(report: VerifyReport) -> str:
    lines = [f"image {report.image_id}:"]
    for r in report.locations:
        lines.append(f"  {r.status:<11} {r.url}" + (f"  ({r.detail})" if r.detail else ""))
    p = report.prune
    if p is not None:
        verb = "would remove (dry run, --yes to act)" if p.dry_run else "removed"
        done = p.remove if p.dry_run else p.removed
        lines.append(f"prune: {verb}: {len(done)}")
        lines.extend(f"  - {url}" for url in done)
        lines.extend(f"  note: {n}" for n in p.notes)
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    from locpick.cache import NodeCache
    from locpick.config import resolve_config
    from locpick.errors import ConfigError
    from locpick.serve import DEFAULT_BIND, announce, serve

    config = resolve_config(args.config)
    directory = args.cache_dir or config.cache.dir
    if not directory:
        raise ConfigError("serve: no node cache: give --cache-dir DIR or set [cache] dir")
    from locpick.metrics import OpsOptions
    from locpick.serve_ops import Ops

    cache = NodeCache(directory, config.cache.max_bytes)
    ops = OpsOptions(metrics=not args.no_metrics, status=not args.no_status)
    cache.recover()
    if args.no_renew:
        return serve(cache, args.bind or DEFAULT_BIND, config=config.serve, ready=announce, ops=ops)
    from locpick.renew import Renewer

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


def _cache(args: argparse.Namespace) -> int:
    from locpick.errors import InputError

    with _client(args) as client:
        if args.action == "list":
            cache = client.node_cache(args.cache_dir)
            assert cache is not None
            entries = cache.entries()
            if args.json:
                _print_json([e.to_json() for e in reversed(entries)])
            else:
                for e in reversed(entries):
                    reg = redact_url(e.registered_url) if e.registered_url else "-"
                    print(f"{e.image_id}  {e.size:>14}  {e.algo}  registered: {reg}")
            return 0
        if args.action == "evict":
            if not args.image_ids and not args.all:
                raise InputError("cache evict: name IMAGE_IDs or give --all")
            cache = client.node_cache(args.cache_dir)
            assert cache is not None
            ids = [e.image_id for e in cache.entries()] if args.all else args.image_ids
            evicted, problems = client.evict(ids, cache_dir=args.cache_dir)
            gone = {e.image_id for e in evicted}
            for image_id in ids:
                if image_id not in gone:
                    print(f"locpick: {image_id}: not in the cache", file=sys.stderr)
            if args.json:
                _print_json({"evicted": sorted(gone), "warnings": problems})
            else:
                for image_id in sorted(gone):
                    print(f"evicted {image_id}")
            return 3 if problems else 0
        if args.action == "reap":
            return _reap(args, client)
        if args.action == "rotate-secret":
            done = client.rotate_secret(cache_dir=args.cache_dir)
        else:
            done = client.reconcile(cache_dir=args.cache_dir)
        if args.json:
            _print_json({"actions": done})
        else:
            print("\n".join(done) if done else "cache and Glance agree")
        return 0


def _reap(args: argparse.Namespace, client: Client) -> int:
    """``cache reap``: one line per image (or JSON), exit 3 when a removal failed."""
    results = client.reap(args.image_ids, dry_run=args.dry_run, cache_dir=args.cache_dir)
    if args.json:
        _print_json({"images": [{"image_id": i, **p.to_json()} for i, p in results]})
    else:
        for image_id, p in results:
            verb = "would remove" if p.dry_run else "removed"
            done = p.remove if p.dry_run else p.removed
            print(f"{image_id}: {verb} {len(done)}")
            for url in done:
                print(f"  - {url}")
            for note in p.notes:
                print(f"  note: {note}")
        if not results:
            print("no locpick cache locations found")
    failed = any(not p.dry_run and len(p.removed) < len(p.remove) for _i, p in results)
    return 3 if failed else 0


def _demo(args: argparse.Namespace) -> int:
    from locpick.demo import run_demo

    return run_demo()


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "download": _download,
    "rank": _rank,
    "verify": _verify,
    "demo": _demo,
    "serve": _serve,
    "cache": _cache,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
