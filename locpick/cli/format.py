"""What the ``locpick`` command prints: the contract's JSON under ``--json``, else text for
people (the download line, the ranking table, the verify report) and the progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from locpick.redact import SCRUB

if TYPE_CHECKING:
    from locpick.models import Progress, Ranking, Result, VerifyReport


def emit(args: argparse.Namespace, value: Any, text: Callable[[Any], str]) -> None:
    """Print a result as the contract's JSON under ``--json``, else as text for people."""
    if args.json:
        print_json(value.to_json())
    else:
        print(text(value))


def print_json(doc: Any) -> None:
    print(SCRUB(json.dumps(doc, indent=2)))


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


def progress_mode(setting: str, *, requested: bool, tty: bool) -> str:
    """How ``download`` shows progress: "bar" (rich, on a terminal), "lines" (plain lines on
    stderr: without rich, or ``[cli] progress = "lines"`` for logs) or "none".

    ``setting``: ``[cli] progress``; ``requested``: no ``--json``/``--no-progress``."""
    if not requested or setting == "none":
        return "none"
    if setting == "auto" and not tty:
        return "none"
    if setting == "lines":
        return "lines"
    try:
        import rich  # noqa: F401 - only whether the cli extra is installed
    except ImportError:
        return "lines"
    return "bar"


@contextmanager
def progress_bar(
    mode: str, *, stream: TextIO | None = None, every: float = 1.0
) -> Iterator[Callable[[Progress], None] | None]:
    """The ``progress`` callback of a CLI download for ``mode`` (see :func:`progress_mode`)."""
    if mode == "none":
        yield None
        return
    if mode == "lines":
        yield _lines(stream if stream is not None else sys.stderr, every)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bar

    with Bar(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("locpick", total=None)

        def update(p: Progress) -> None:
            bar.update(task, completed=p.done, total=p.total)

        yield update


def _lines(stream: TextIO, every: float) -> Callable[[Progress], None]:
    """Plain progress lines (no rich): one per ``every`` seconds, and the last one."""
    last = [-every]

    def update(p: Progress) -> None:
        final = p.total is not None and p.done >= p.total
        if p.seconds - last[0] < every and not final:
            return
        last[0] = p.seconds
        rate = p.done / p.seconds / 1e6 if p.seconds > 0 else 0.0
        if p.total:
            size = f"{p.done / 1e6:.1f}/{p.total / 1e6:.1f} MB ({100 * p.done // p.total}%)"
        else:
            size = f"{p.done / 1e6:.1f} MB"
        print(f"locpick: {p.image_id}: {size} at {rate:.1f} MB/s", file=stream, flush=True)

    return update


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
