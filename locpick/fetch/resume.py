"""Resuming on a location with bytes already held: which validator goes into If-Range
(a strong ETag, else Last-Modified), whether the held bytes match the served version, and what
to do when a server ignored Range (discard the head, restart from 0, or go elsewhere)."""

from __future__ import annotations

from collections.abc import Callable

from locpick.fetch.state import Abandon, Candidate
from locpick.sink.atomic import AtomicSink
from locpick.transports.base import Stream

Validators = dict[str, str | None]


def if_range(held: Validators | None) -> str | None:
    """A validator of the bytes held, when they came from this same URL (never a weak ETag)."""
    if not held:
        return None
    etag = held.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return held.get("last_modified")


def held_matches(held: Validators | None, stream: Stream) -> bool:
    """False when the held bytes came from this URL under different validators."""
    if not held:
        return True
    etag, lastmod = stream.etag, stream.last_modified
    if held.get("etag") and etag:
        return bool(held.get("etag") == etag)
    if held.get("last_modified") and lastmod:
        return bool(held.get("last_modified") == lastmod)
    return True


class Resume:
    """Reconciles each new stream with the bytes the sink holds, and remembers which
    locations those bytes came from (a checksum failure blames only a sole source)."""

    def __init__(
        self, sink: AtomicSink, cheaper: Callable[[Candidate, int], Candidate | None]
    ) -> None:
        self.sink = sink
        self.cheaper = cheaper
        #: Locations that delivered bytes since the sink was last (re)started.
        self.sources: set[str] = set()

    def if_range(self, cand: Candidate) -> str | None:
        return if_range(self.sink.validators.get(cand.url))

    def restart(self) -> None:
        """Drop every byte held."""
        self.sink.reset()
        self.sources.clear()

    def remember(self, cand: Candidate, stream: Stream | None = None) -> None:
        self.sources.add(cand.url)
        if stream is not None:
            self.sink.remember_validators(cand.url, stream.etag, stream.last_modified)

    def align(self, cand: Candidate, stream: Stream) -> str | None:
        """Reconcile the stream's start with the bytes held; returns a note for the attempt."""
        held = self.sink.offset
        if stream.changed:
            self.restart()
            self.remember(cand, stream)
            return f"resource changed (If-Range failed): restarted from 0, dropped {held} bytes"
        if stream.start >= held:
            self.remember(cand, stream)
            return None
        # The server ignored Range (200, whole body): discard the first bytes, restart, or go
        # elsewhere. Network cost of discard and restart is the same (all ``held`` bytes come
        # again); restart also rewrites them, so it is only chosen when the bytes held may be
        # of another version of the resource.
        alt = self.cheaper(cand, held)
        if alt is not None:
            raise Abandon(
                f"{stream.final_url}: server ignores Range; resuming the remaining bytes at "
                f"{alt.url} is cheaper than re-reading {held} bytes here",
                alt,
            )
        if held_matches(self.sink.validators.get(cand.url), stream):
            self.remember(cand, stream)
            return (
                f"server ignored Range: discarded {held} bytes already held "
                "(cheaper than restarting: same bytes on the wire, no rewrite)"
            )
        self.restart()
        self.remember(cand, stream)
        return (
            f"server ignored Range: restarted from 0 (the {held} bytes held may be of "
            "another version of the resource)"
        )
