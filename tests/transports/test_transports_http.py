"""Hostile HTTP: redirects, secrets, tokens, TLS and resource bounds against loopback servers."""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from fixtures_security import (
    RawServer,
    TLSOrigin,
    dripping_headers,
    endless_body,
    endless_headers,
)
from helpers import image_record, run_cli, temp_leftovers, write_record

from locpick._demo.origin import Origin
from locpick.config.model import Config, TransferConfig
from locpick.errors import LocationUnreachable, LocpickError, TransferError
from locpick.models import Image, Location
from locpick.redact import SCRUB
from locpick.transports.base import Context
from locpick.transports.http.transport import HttpTransport

DATA = os.urandom(96 * 1024)
TOKEN = "gAAAAA-very-secret-token-4242"
PASSWORD = "s3cr3t-userinfo-pw"
AWS_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def _download(tmp_path: Path, *urls: str, extra: tuple[str, ...] = (), **env: str):  # type: ignore[no-untyped-def]
    meta = write_record(tmp_path / "meta.json", image_record("img", DATA, list(urls)))
    dest = tmp_path / "out" / "img.raw"
    dest.parent.mkdir(exist_ok=True)
    r = run_cli("download", "img", str(dest), "--metadata", str(meta), "--json", *extra, env=env)
    return r, dest


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("file:///etc/passwd", "refused redirect to a file URL"),
        ("gopher://127.0.0.1:1/x", "refused redirect to a gopher URL"),
        ("http://169.254.169.254/latest/meta-data/", "forbidden network (169.254.0.0/16)"),
        ("http://[fe80::1]/x", "forbidden network (fe80::/10)"),
        ("http://2852039166/latest", "forbidden network (169.254.0.0/16)"),
    ],
)
def test_redirect_to_forbidden_target_refused(tmp_path: Path, target: str, needle: str) -> None:
    """A redirect to file://, another scheme or a metadata service is refused: exit 3, no dest."""
    with Origin(DATA) as o:
        o.faults.redirect_to = target
        r, dest = _download(tmp_path, o.url)
    assert r.returncode == 3, r.stderr
    assert needle in r.stderr
    assert "root:" not in r.stdout + r.stderr
    assert not dest.exists() and temp_leftovers(dest.parent) == []


def test_redirect_loop_is_bounded(tmp_path: Path) -> None:
    """An origin redirecting to itself is given up after [security] max_redirects hops."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[security]\nmax_redirects = 3\n")
    with Origin(DATA) as o:
        o.faults.redirect_to = o.url
        r, dest = _download(tmp_path, o.url, extra=("--config", str(cfg)))
        hops = len(o.requests)
    assert r.returncode == 3
    assert "more than 3 redirects" in r.stderr
    assert 4 <= hops <= 4 * 3  # probe + open (+ a retry), each bounded to 4 requests
    assert not dest.exists()


def test_final_url_is_reported(tmp_path: Path) -> None:
    """A redirect to a good origin works, and the URL that served the bytes is reported."""
    with Origin(DATA) as good, Origin(DATA) as hop:
        hop.faults.redirect_to = good.url
        r, dest = _download(tmp_path, hop.url)
        good_url = good.url
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source_url"] == good_url
    assert dest.read_bytes() == DATA


# -- secrets -----------------------------------------------------------------------------------


def _fake_glance(record: dict[str, object]) -> Origin:
    """An origin whose only path is the Glance image API for image ``img``."""
    return Origin(json.dumps(record).encode(), path="/v2/images/img")


def test_token_only_to_glance_and_never_printed(tmp_path: Path) -> None:
    """The token goes to the Glance host only, never to locations or through redirects, and
    appears nowhere: stdout, stderr (--verbose), --json, or files written beside dest."""
    with Origin(DATA) as store, Origin(DATA) as hop:
        hop.faults.redirect_to = store.url
        record = image_record("img", DATA, [hop.url])  # the bytes come through the redirect
        with _fake_glance(record) as glance:
            dest = tmp_path / "img.raw"
            r = run_cli(
                "download",
                "img",
                str(dest),
                "--glance-url",
                glance.base,
                "--json",
                "--verbose",
                env={"OS_AUTH_TOKEN": TOKEN},
            )
            glance_headers = [req.headers for req in glance.requests]
        store_headers = [req.headers for req in store.requests]
        hop_headers = [req.headers for req in hop.requests]
    assert r.returncode == 0, r.stderr
    assert any(h.get("X-Auth-Token") == TOKEN for h in glance_headers)
    assert store_headers and hop_headers
    for h in store_headers + hop_headers:
        assert "X-Auth-Token" not in h and TOKEN not in json.dumps(h)
    assert TOKEN not in r.stdout + r.stderr
    # Every file locpick may have written: beside dest, and its cache dir (history lives there).
    written = [*tmp_path.rglob("*"), *Path(os.environ["XDG_CACHE_HOME"]).rglob("*")]
    for path in written:
        if path.is_file() and path != dest:
            assert TOKEN.encode() not in path.read_bytes()


def test_secrets_redacted_from_errors_json_and_logs(tmp_path: Path) -> None:
    """Userinfo, secret query values and secret env values never reach output, even on failure."""
    bad = [
        f"http://admin:{PASSWORD}@127.0.0.1:1/img.raw",
        f"http://127.0.0.1:1/img.raw?X-Amz-Credential={AWS_SECRET}&x=1",
        f"http://127.0.0.1:1/{AWS_SECRET}/img.raw",
    ]
    for command in ("download", "rank", "verify"):
        meta = write_record(tmp_path / "meta.json", image_record("img", DATA, bad))
        args = [command, "img"] + ([str(tmp_path / "o")] if command == "download" else [])
        r = run_cli(
            *args,
            "--metadata",
            str(meta),
            "--json",
            "--verbose",
            env={"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "OS_PASSWORD": PASSWORD},
        )
        assert r.returncode in (0, 3), r.stderr
        blob = r.stdout + r.stderr
        assert PASSWORD not in blob and AWS_SECRET not in blob, (command, blob)
        assert "127.0.0.1:1" in blob  # the locations are still named


def test_exception_reprs_and_log_records_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    """A registered secret is scrubbed from an exception's str, repr and args, and from records
    logged on the ``locpick`` logger whatever handler the application installed."""
    SCRUB.add(TOKEN)
    exc = LocationUnreachable(f"http://h/x?t={TOKEN}: HTTP 500", url=f"http://h/x?t={TOKEN}")
    assert TOKEN not in str(exc) and TOKEN not in repr(exc) and TOKEN not in exc.url
    assert all(TOKEN not in str(a) for a in exc.args)
    with caplog.at_level(logging.INFO, logger="locpick"):
        logging.getLogger("locpick").info("token is %s", TOKEN)
        try:
            raise LocpickError("wrapped") from ValueError(TOKEN)
        except LocpickError:
            logging.getLogger("locpick").exception("failed with %s", TOKEN)
    assert caplog.records
    assert TOKEN not in caplog.text
    for rec in caplog.records:
        assert TOKEN not in rec.getMessage()


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_origin(ca: trustme.CA) -> Iterator[TLSOrigin]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    with TLSOrigin(DATA, ctx) as o:
        yield o


def test_tls_trusted_ca_file(tmp_path: Path, ca: trustme.CA, tls_origin: TLSOrigin) -> None:
    """With [tls] ca_file naming the test CA, an https location downloads and verifies."""
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[tls]\nca_file = "{pem}"\n')
    r, dest = _download(tmp_path, tls_origin.url, extra=("--config", str(cfg)))
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == DATA
    assert "NOT verified" not in r.stderr and "verification is OFF" not in r.stderr


def test_tls_untrusted_cert_refused(tmp_path: Path, tls_origin: TLSOrigin) -> None:
    """Verification is on by default: a certificate from an unknown CA is refused (exit 3)."""
    other = trustme.CA()
    pem = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(pem))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[tls]\nca_file = "{pem}"\n')
    for extra in ((), ("--config", str(cfg))):
        r, dest = _download(tmp_path, tls_origin.url, extra=extra)
        assert r.returncode == 3, r.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in r.stderr or "certificate verify" in r.stderr
        assert not dest.exists()


def test_insecure_works_and_warns_every_time(tmp_path: Path, tls_origin: TLSOrigin) -> None:
    """``--insecure`` accepts the unknown certificate on download, rank and verify, and warns."""
    meta = write_record(tmp_path / "meta.json", image_record("img", DATA, [tls_origin.url]))
    dest = tmp_path / "o.raw"
    for args in (
        ("download", "img", str(dest)),
        ("rank", "img"),
        ("verify", "img"),
    ):
        r = run_cli(*args, "--metadata", str(meta), "--insecure", "--json")
        assert r.returncode == 0, (args, r.stderr)
        assert "verification is OFF" in r.stderr
    assert dest.read_bytes() == DATA


def test_unreadable_ca_file_is_config_error(tmp_path: Path) -> None:
    """A [tls] ca_file that cannot be loaded is exit 2 naming the file."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[tls]\nca_file = "{tmp_path}/missing.pem"\n')
    r, _dest = _download(tmp_path, "https://127.0.0.1:1/x", extra=("--config", str(cfg)))
    assert r.returncode == 2, r.stderr
    assert "missing.pem" in r.stderr


# -- resource bounds ---------------------------------------------------------------------------


def test_content_length_beyond_size_refused(tmp_path: Path) -> None:
    """A location announcing size + 1 MiB (a whole body: it ignores Range) is marked bad
    before its body is read."""
    with Origin(DATA) as o:
        o.faults.extra_bytes = 1 << 20
        o.faults.extra_in_length = True
        o.faults.ignore_range = True
        r, dest = _download(tmp_path, o.url)
    assert r.returncode == 3
    assert f"differs from the image's {len(DATA)}" in r.stderr
    assert not dest.exists() and temp_leftovers(dest.parent) == []


def test_endless_body_cut_off_at_size(tmp_path: Path) -> None:
    """A location sending bytes forever (no Content-Length) is cut off past the image size and
    marked bad; locpick stops reading long before a runaway amount has been sent."""
    with RawServer(endless_body) as srv:
        r, dest = _download(tmp_path, srv.url)
        time.sleep(0.2)
        sent = srv.sent
    assert r.returncode == 3, r.stderr
    # the engine reads the image's size and stops: the body beyond it is never taken, and the
    # bytes it took are refused (their hash), or the excess is seen first
    assert "sent more than the image size" in r.stderr or "sha512 mismatch" in r.stderr
    assert not dest.exists() and temp_leftovers(dest.parent) == []
    assert sent < 256 << 20  # cut off: a few buffers, not an unbounded stream


def test_endless_headers_bounded(tmp_path: Path) -> None:
    """Header lines that never end are refused by the bounded parser, quickly."""
    with RawServer(endless_headers) as srv:
        r, dest = _download(tmp_path, srv.url)
        sent = srv.sent
    assert r.returncode == 3, r.stderr
    assert not dest.exists()
    assert sent < 64 << 20  # refused after a bounded amount, not read until the stream ends


def test_dripping_server_cannot_hold_a_download(tmp_path: Path) -> None:
    """A server dripping 2 bytes/s cannot hold the CLI: it fails in seconds, not hours."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[transfer]\nlow_speed_window = 2.0\n[probe]\ndeadline = 1.0\n")
    with Origin(DATA) as o:
        o.faults.drip = True
        o.faults.drip_interval = 0.5
        # len(DATA) / 2 B/s would be 13 hours: pytest's timeout is the hang guard
        r, dest = _download(tmp_path, o.url, extra=("--config", str(cfg)))
    assert r.returncode == 3, r.stderr
    assert "probe deadline" in r.stderr or "too slow" in r.stderr
    assert not dest.exists() and temp_leftovers(dest.parent) == []


def test_dripping_stream_is_abandoned_after_one_window() -> None:
    """An opened stream that drips (bytes keep coming, so no idle timeout fires) is abandoned
    by the [security] min_speed_bps floor after one [transfer] low_speed_window."""
    config = Config(transfer=TransferConfig(low_speed_window=1.5))
    ctx = Context(config)
    image = Image(id="img", size=len(DATA))
    with Origin(DATA) as o:
        o.faults.drip = True
        o.faults.drip_interval = 0.25
        stream = HttpTransport(ctx).open(Location(url=o.url), image, offset=0)
        t0 = time.monotonic()
        got = 0
        with pytest.raises(TransferError, match="too slow"):
            buf = memoryview(bytearray(65536))
            while time.monotonic() - t0 < 60:
                n = stream.readinto(buf)
                assert n > 0
                got += n
        elapsed = time.monotonic() - t0
        stream.close()
    ctx.close()
    assert elapsed > 1.0  # not before one window
    assert got < 1000  # a few dripped bytes at most, never the body


def test_probe_read_is_bounded() -> None:
    """A probe reads about ``ttfb_bytes`` even from a location that would send much more."""
    big = os.urandom(8 << 20)
    ctx = Context(Config(transfer=TransferConfig()))
    with Origin(big) as o:
        o.faults.ignore_range = True  # answers 200 with the whole body
        image = Image(id="img", size=len(big))
        probe = HttpTransport(ctx).probe(Location(url=o.url), image, timeout=5.0)
        time.sleep(0.2)
        sent = o.bytes_sent
    ctx.close()
    assert probe.ok
    assert sent < len(big)  # the connection was closed early, not drained


def test_dripping_headers_bounded_by_first_byte_timeout(tmp_path: Path) -> None:
    """Headers dripped a byte at a time (per-read timeouts never fire) cannot hold a probe or a
    download past [probe] deadline / [transfer] first_byte_timeout; the process exits."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[transfer]\nfirst_byte_timeout = 2.0\n[probe]\ndeadline = 1.0\n")
    config = Config(transfer=TransferConfig(first_byte_timeout=2.0))
    with RawServer(dripping_headers) as srv:
        ctx = Context(config)
        with pytest.raises(LocationUnreachable, match="no complete response headers within 2s"):
            HttpTransport(ctx).open(Location(url=srv.url), Image(id="img", size=10), offset=0)
        ctx.close()
        # without the deadline the probe thread would keep the process alive (the hang guard)
        r = run_cli(
            "rank",
            "img",
            "--metadata",
            str(write_record(tmp_path / "m.json", image_record("img", DATA, [srv.url]))),
            "--config",
            str(cfg),
        )
    assert r.returncode == 0, r.stderr
    assert "probe deadline" in r.stdout or "no complete response headers" in r.stdout


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("", "more than 5 redirects"),  # a redirect to itself
        ("///etc/passwd", "more than 5 redirects"),  # same origin (which redirects again)
        ("http://[::1", "malformed URL"),
        ("http://127.0.0.1:99999/x", "malformed URL"),
        ("/caf\u00e9 au lait", "malformed URL"),
        ("javascript:alert(1)", "refused redirect to a javascript URL"),
        ("file:/etc/passwd", "refused redirect to a file URL"),
        ("//169.254.169.254/latest", "forbidden network"),
        ("HTTP://169.254.169.254/", "forbidden network"),
    ],
)
def test_hostile_redirect_targets_refused_in_process(target: str, needle: str) -> None:
    """Whatever a Location header says, open() fails with a LocationError naming why."""
    ctx = Context(Config())
    try:
        with Origin(DATA) as o:
            o.faults.redirect_to = target
            with pytest.raises(LocpickError, match=needle):
                HttpTransport(ctx).open(Location(url=o.url), Image(id="img", size=1), offset=0)
    finally:
        ctx.close()
