"""`locpick cache prefetch` usage errors: one line, exit 2, nothing fetched."""

from __future__ import annotations

from pathlib import Path

from helpers import run_cli


def test_prefetch_needs_images_or_a_filter(tmp_path: Path) -> None:
    r = run_cli("cache", "prefetch", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2
    assert "name IMAGE_IDs or select images with --tag/--property" in r.stderr


def test_prefetch_property_must_be_key_value(tmp_path: Path) -> None:
    r = run_cli("cache", "prefetch", "--property", "os_distro", "--cache-dir", str(tmp_path))
    assert r.returncode == 2 and "expected KEY=VALUE" in r.stderr


def test_prefetch_refuses_a_path_as_image_id_and_zero_jobs(tmp_path: Path) -> None:
    meta = ["--cache-dir", str(tmp_path / "c"), "--glance-url", "http://127.0.0.1:9"]
    r = run_cli("cache", "prefetch", "../../etc", *meta)
    assert r.returncode == 2 and "is not an image id" in r.stderr
    r = run_cli("cache", "prefetch", "abc", "--jobs", "0", *meta)
    assert r.returncode == 2 and "--jobs must be at least 1" in r.stderr
