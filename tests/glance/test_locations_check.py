"""The check after a Glance write (``GlanceLocations._check_after``) on given lists: a pure
comparison of the list before and the write's answer, so no server is needed here (the
writes themselves are tested against the real Glance in ``test_fleet_writes``)."""

from __future__ import annotations

from typing import Any

import httpx

from locpick.glance.locations import GlanceLocations

A = {"url": "http://127.0.0.1:1/a", "metadata": {"store": "fs1"}}
B = {"url": "http://127.0.0.1:2/b", "metadata": {"locpick_cache": "true"}}


def _problems(before: list[Any], answer: list[Any], **kw: Any) -> list[str]:
    with httpx.Client() as http:
        api = GlanceLocations(http, "http://127.0.0.1:9", None)
        api._check_after("img", before, answer=answer, **kw)
        return api.problems


def test_an_entry_changed_by_a_concurrent_write_is_reported() -> None:
    changed = {"url": A["url"], "metadata": {"store": "fs2"}}
    assert len(_problems([A, B], [changed, B])) == 1


def test_the_callers_parsed_list_is_matched_by_url() -> None:
    """``before`` from the caller's parsed record may differ from Glance's raw entries in
    details: only a URL gone counts then."""
    parsed = {"url": A["url"], "metadata": {}}
    assert _problems([parsed, B], [A, B], exact=False) == []
    assert len(_problems([parsed, B], [B], exact=False)) == 1


def test_the_removed_entry_is_meant_to_go_and_must_be_gone() -> None:
    assert _problems([A, B], [A], removed=B) == []
    assert len(_problems([A, B], [A, B], removed=B)) == 1
    assert len(_problems([A, B], [], removed=B)) == 1
