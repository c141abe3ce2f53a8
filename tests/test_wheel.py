"""The package as users get it: ``python -m build``, the wheel installed (not editable) into a
fresh venv with only its declared dependencies, then ``locpick demo`` and a ``locpick
download`` without rich (plain progress lines), run as real processes outside the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.wheel


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``python -m build`` makes (sdist first, the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], timeout=900)
    (whl,) = out.glob("locpick-*.whl")
    assert list(out.glob("locpick-*.tar.gz"))
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its dependencies only."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", str(env_dir)], timeout=300)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "install", "--quiet", str(wheel)], timeout=900)
    return env_dir


def _clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH (nothing from this tree), a fresh HOME, no config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LOCPICK", "OS_"))}
    env["HOME"] = str(home)
    return env


def test_wheel_contents(wheel: Path) -> None:
    """The wheel ships the package with py.typed and the demo origin, nothing of the tests."""
    names = zipfile.ZipFile(wheel).namelist()
    assert "locpick/py.typed" in names
    assert "locpick/__init__.py" in names
    assert "locpick/_demo/origin.py" in names  # `locpick demo` needs it
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"locpick"}
    assert not [n for n in names if "/tests/" in n or n.startswith(("tests/", "benchmarks/"))]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Classifier: Typing :: Typed" in text
    assert "Project-URL: Source" in text
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist: rich")]
    assert requires and all("extra ==" in line for line in requires)  # rich only in an extra


def test_installed_wheel_runs_demo(venv: Path, tmp_path: Path) -> None:
    """``locpick demo`` from the installed wheel, outside the source tree: exit 0, verified."""
    home = tmp_path / "home"
    home.mkdir()
    proc = _run(
        [str(venv / "bin" / "locpick"), "demo"], cwd=tmp_path, env=_clean_env(home), timeout=600
    )
    assert "verified" in proc.stdout
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import rich"],
        cwd=tmp_path,
        env=_clean_env(home),
        capture_output=True,
        check=False,
    )
    assert probe.returncode != 0  # rich is not installed: the demo ran without it


def test_installed_download_plain_progress_without_rich(venv: Path, tmp_path: Path) -> None:
    """``locpick download`` without rich: plain progress lines on stderr, then the result."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent(
        """
        import hashlib, json, os, subprocess, sys
        from locpick._demo.faults import Faults
        from locpick._demo.origin import Origin

        data = os.urandom(8 << 20)
        with Origin(data, faults=Faults(bandwidth=16e6)) as origin:
            rec = {"id": "img", "status": "active", "size": len(data),
                   "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest(),
                   "locations": [{"url": origin.url, "metadata": {}}]}
            with open("rec.json", "w") as fh:
                json.dump(rec, fh)
            with open("node.toml", "w") as fh:
                fh.write('[cli]\\nprogress = "lines"\\n[transfer]\\nbuffer_bytes = "256KiB"\\n')
            proc = subprocess.run(
                [sys.argv[1], "download", "img", "out.raw", "--metadata", "rec.json",
                 "--config", "node.toml"], capture_output=True, text=True)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            sys.exit(proc.returncode)
        """
    )
    proc = _run(
        [str(venv / "bin" / "python"), "-c", script, str(venv / "bin" / "locpick")],
        cwd=tmp_path,
        env=_clean_env(home),
        timeout=600,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("locpick: img: ")]
    assert lines, proc.stderr
    assert "(100%)" in lines[-1]
    assert (tmp_path / "out.raw").stat().st_size == 8 << 20
