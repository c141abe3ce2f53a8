"""The CLI's progress without rich: plain lines, chosen by ``[cli] progress`` and the terminal."""

from __future__ import annotations

import io
import sys

import pytest

from locpick.cli.format import progress_bar, progress_mode
from locpick.models import Progress


def test_mode_without_rich_is_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto on a terminal: a bar with rich, plain lines without it; never when not asked."""
    assert progress_mode("auto", requested=True, tty=True) == "bar"
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    assert progress_mode("auto", requested=True, tty=True) == "lines"
    assert progress_mode("bar", requested=True, tty=True) == "lines"
    assert progress_mode("auto", requested=True, tty=False) == "none"
    assert progress_mode("lines", requested=True, tty=False) == "lines"
    assert progress_mode("lines", requested=False, tty=True) == "none"
    assert progress_mode("none", requested=True, tty=True) == "none"


def test_lines_throttled_and_final() -> None:
    """One line per interval, always the last (100 %) one."""
    out = io.StringIO()
    with progress_bar("lines", stream=out, every=1.0) as update:
        assert update is not None
        for i, t in enumerate((0.0, 0.2, 0.5, 1.1, 1.5, 1.6)):
            update(Progress("img", (i + 1) * 100, 1000, t))
        update(Progress("img", 1000, 1000, 1.7))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("locpick: img: 0.0/0.0 MB (10%)")
    assert "(100%)" in lines[-1]
