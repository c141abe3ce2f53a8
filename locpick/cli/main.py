"""The ``locpick`` command: parse, call the API, print, exit with the contract's code.

The parser is ``cliargs``, the output ``cliformat``, the node-cache commands ``clicache``;
each command imports the API when it runs, and the output, error and redaction modules are
imported after the arguments parsed, so ``locpick --help`` costs little more than argparse.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from locpick.cli.args import build_parser, client_for

__all__ = ["main"]

if TYPE_CHECKING:
    from locpick.client import Client
    from locpick.report import DownloadReport

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from locpick.cli.format import print_json
    from locpick.errors import LocpickError
    from locpick.redact import SCRUB, RedactingFilter, install_log_redaction

    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="locpick: %(message)s", stream=sys.stderr)
    install_log_redaction()
    for h in logging.getLogger().handlers:
        h.addFilter(RedactingFilter())
        if getattr(args, "log_format", "text") == "json":
            from locpick.cli.logfmt import JsonFormatter

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
            print_json({"error": SCRUB(str(exc)), "attempts": [a.to_json() for a in exc.attempts]})  # type: ignore[attr-defined]
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


def _download(args: argparse.Namespace) -> int:
    from locpick.cli.format import emit, format_result, print_json, progress_bar

    if args.metrics_file:
        from locpick.serve.metrics import check_textfile_path

        check_textfile_path(args.metrics_file)
    from locpick.report import Recorder

    recorder = Recorder(args.image_id)
    try:
        with client_for(args) as client, progress_bar(_progress_mode(args, client)) as progress:
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
        print_json(doc)
    else:
        emit(args, result, format_result)
    return 0


def _progress_mode(args: argparse.Namespace, client: Client) -> str:
    """``[cli] progress``, unless ``--json`` or ``--no-progress`` turn it off."""
    from locpick.cli.format import progress_mode

    requested = not args.json and not args.no_progress
    return progress_mode(client.config.cli.progress, requested=requested, tty=sys.stderr.isatty())


def _write_metrics(path: str, report: DownloadReport) -> None:
    """Write the download's textfile; failing to is a warning (the image was delivered)."""
    from locpick.serve.metrics import write_textfile

    try:
        write_textfile(path, report)
    except OSError as exc:
        log.warning("--metrics-file %s: not written (%s)", path, exc.strerror or exc)


def _rank(args: argparse.Namespace) -> int:
    from locpick.cli.format import emit, format_ranking

    with client_for(args) as client:
        ranking = client.rank(args.image_id, metadata=args.metadata)
    emit(args, ranking, format_ranking)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from locpick.cli.format import emit, format_report

    with client_for(args) as client:
        report = client.verify(
            args.image_id,
            metadata=args.metadata,
            quick=args.quick,
            prune=args.prune,
            yes=args.yes,
        )
    emit(args, report, format_report)
    return 0 if report.ok else 3


def _serve(args: argparse.Namespace) -> int:
    from locpick.cli.cache import serve_command

    return serve_command(args)


def _cache(args: argparse.Namespace) -> int:
    from locpick.cli.cache import cache_command

    return cache_command(args)


def _demo(args: argparse.Namespace) -> int:
    from locpick.cli.demo import run_demo

    return run_demo(main)


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
