"""The test suite stands on its own: no test, fixture, harness or CI script reaches outside
this repository (a fresh clone with nothing beside it runs everything)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.testserver

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"/work/|\.\./shared|Path\(__file__\)[^\n]*\.parent\.parent\.parent")


def test_no_path_outside_the_repository() -> None:
    files = [ROOT / ".ci" / "run"]
    for pattern in ("tests/**/*.py", "benchmarks/*.py", "examples/*.py"):
        files += ROOT.glob(pattern)
    assert len(files) > 20
    me = Path(__file__).resolve()
    hits = [
        f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
        for f in files
        if f.resolve() != me
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []
