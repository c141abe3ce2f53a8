"""Small helpers shared by the tests: image records and running the CLI for real."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def image_record(
    image_id: str, data: bytes, locations: Iterable[Any], *, algo: str = "sha512", **extra: Any
) -> dict[str, Any]:
    """A Glance-v2-shaped record for ``data``; locations are URLs or (url, metadata) pairs."""
    locs = []
    for loc in locations:
        if isinstance(loc, str):
            locs.append({"url": loc, "metadata": {}})
        else:
            url, meta = loc
            locs.append({"url": url, "metadata": dict(meta)})
    record: dict[str, Any] = {
        "id": image_id,
        "status": "active",
        "size": len(data),
        "checksum": hashlib.md5(data).hexdigest(),
        "os_hash_algo": algo,
        "os_hash_value": hashlib.new(algo, data).hexdigest(),
        "locations": locs,
    }
    record.update(extra)
    return record


def write_record(path: Path, record: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(record))
    return path


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``python -m locpick`` subprocess: this source tree first on
    PYTHONPATH, an empty config unless LOCPICK_CONFIG is set, then ``env``."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("LOCPICK_CONFIG", str(ROOT / "tests" / "empty-config.toml"))
    full_env.update(env or {})
    return full_env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m locpick ARGS`` from this source tree and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "locpick", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=cwd,
        check=False,
    )


def temp_leftovers(directory: Path) -> list[str]:
    """Files locpick may have left beside a dest (temp files, parts)."""
    return sorted(p.name for p in directory.iterdir() if ".locpick" in p.name)


def require_tool(tool: str, package: str | None = None) -> str:
    """The path of the system tool ``tool``. A missing tool skips the test with the line that
    installs it, except under CI (``CI=true``), where ``.ci/run`` installs it: there it fails."""
    path = shutil.which(tool)
    if path is not None:
        return path
    hint = f"{tool} is not installed: apt-get install {package or tool} (.ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {hint}")
    pytest.skip(hint)
