"""Every config key is checked when the file is read: sizes and durations take units, and
each kind of wrong value is exit 2 naming the file, the section and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import image_record, run_cli, write_record

from locpick.config.load import load_config
from locpick.errors import ConfigError


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_units_accepted(tmp_path: Path) -> None:
    """``"10G"``, ``"512MiB"``, ``"30s"``, ``"5m"``, ``"1h30m"``: loaded as bytes and seconds."""
    cfg = load_config(
        _config(
            tmp_path,
            '[cache]\nmax_bytes = "10G"\nlease = "1h30m"\n'
            '[transfer]\nbuffer_bytes = "512KiB"\nconnect_timeout = "30s"\n'
            'total_timeout = "5m"\nlow_speed_bps = "1MB/s"\npiece_size = 1048576\n'
            '[serve]\nretry_after = "1m"\nmax_rate = "100M"\n'
            "[probe]\ndeadline = 2\n",
        )
    )
    assert cfg.cache.max_bytes == 10 << 30 and isinstance(cfg.cache.max_bytes, int)
    assert cfg.cache.lease == 5400.0
    assert cfg.transfer.buffer_bytes == 512 << 10
    assert cfg.transfer.connect_timeout == 30.0
    assert cfg.transfer.total_timeout == 300.0
    assert cfg.transfer.low_speed_bps == 1e6
    assert cfg.transfer.piece_size == 1 << 20
    assert cfg.serve.retry_after == 60 and isinstance(cfg.serve.retry_after, int)
    assert cfg.serve.max_rate == 100 << 20
    assert cfg.probe.deadline == 2.0 and isinstance(cfg.probe.deadline, float)


WRONG = {
    "wrong type": ('[transfer]\nretries = "two"\n', "[transfer] retries", "expected an integer"),
    "wrong type (size)": ("[cache]\nmax_bytes = true\n", "[cache] max_bytes", "expected a size"),
    "bad unit": ('[cache]\nmax_bytes = "ten"\n', "[cache] max_bytes", "is not a size"),
    "bad duration unit": (
        '[transfer]\nconnect_timeout = "30 parsecs"\n',
        "[transfer] connect_timeout",
        "is not a duration",
    ),
    "negative": ("[transfer]\nconnect_timeout = -1\n", "[transfer] connect_timeout", "negative"),
    "unknown key": ("[cache]\nmax_byte = 10\n", "[cache] max_byte", "unknown key"),
    "bad enum": ('[cli]\nprogress = "fancy"\n', "[cli] progress", "is not one of"),
    "fraction of a whole duration": (
        '[serve]\nretry_after = "1.5s"\n',
        "[serve] retry_after",
        "whole number",
    ),
}


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_wrong_value_names_file_section_key(tmp_path: Path, kind: str) -> None:
    """Loading fails at once with a ConfigError naming the file, section and key."""
    text, where, why = WRONG[kind]
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert where in message
    assert why in message


@pytest.mark.parametrize("kind", ["bad unit", "negative", "bad enum"])
def test_wrong_value_is_exit_2(tmp_path: Path, kind: str) -> None:
    """The CLI: exit 2 and one line naming the file, section and key; nothing fetched."""
    text, where, _why = WRONG[kind]
    path = _config(tmp_path, text)
    rec = write_record(tmp_path / "rec.json", image_record("img", b"x", ["http://127.0.0.1:9/x"]))
    proc = run_cli(
        "download", "img", str(tmp_path / "out"), "--metadata", str(rec), "--config", str(path)
    )
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr and where in proc.stderr
    assert not (tmp_path / "out").exists()
