"""Issue 18 attack 4: one redaction for every rendered output, whoever configured logging.

Secrets in location URLs (query keys such as ``access_token``, ``X-Goog-Signature``,
``sessionid``; userinfo passwords) must not reach log lines of locpick or of the libraries it
drives (httpx, httpcore, botocore, s3fs, keystoneauth), JSON documents, or error messages.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import image_record, run_cli, write_record
from hypothesis import given, settings
from hypothesis import strategies as st

import locpick
from locpick._demo.origin import Origin
from locpick.config.model import Config, TransferConfig
from locpick.errors import LocationUnreachable
from locpick.models import Attempt, Location, Reasons, Score
from locpick.redact import REDACTED, Redactor, redact_text, redact_url

WORDS = ("token", "sig", "key", "secret", "password", "credential", "session", "auth")
#: Loggers of the libraries locpick drives; the children are where most of them really log.
LIBRARY_LOGGERS = (
    "locpick",
    "httpx",
    "httpcore.http11",
    "httpcore.connection",
    "botocore.endpoint",
    "botocore.auth",
    "s3fs",
    "keystoneauth.session",
)


@pytest.fixture
def app_logging() -> Iterator[io.StringIO]:
    """Logging as an application configures it: a root handler at DEBUG, no locpick CLI."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def test_library_download_with_app_logging_leaks_no_secret(
    tmp_path: Path, app_logging: io.StringIO
) -> None:
    """A real download as a library under an app's INFO logging: httpx's request lines and
    locpick's own records name the location without its secrets."""
    data = os.urandom(100_000)
    secrets = ["pw-Uq83hd7Zs", "at-Hk29dj3Lq", "gs-Pw81ks0Mn", "si-Zx71hs2Ka", "ak-Lo00pq9Wd"]
    with Origin(data) as origin:
        url = (
            f"http://admin:{secrets[0]}@127.0.0.1:{origin.port}/img.raw?access_token={secrets[1]}"
            f"&X-Goog-Signature={secrets[2]}&sessionid={secrets[3]}&api_key={secrets[4]}&v=1"
        )
        dead = f"http://127.0.0.1:1/img.raw?access_token={secrets[1]}"
        record = image_record("img", data, [url, dead])
        # more copies than max_sources: they are probed first (httpx logs the probes)
        one = Config(transfer=TransferConfig(max_sources=1))
        result = locpick.download("img", tmp_path / "dest", metadata=record, config=one)
    assert (tmp_path / "dest").read_bytes() == data
    text = app_logging.getvalue()
    assert "HTTP Request" in text  # httpx really logged the requests
    rendered = text + json.dumps(result.to_json()) + repr(result)
    for secret in secrets:
        assert secret not in rendered, (secret, rendered)
    assert "127.0.0.1" in rendered and "v=1" in rendered


_secret = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=10, max_size=24)
_affix = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", max_size=6)
_plain = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6)


@st.composite
def _secret_key(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from(WORDS))
    word = "".join(c.upper() if draw(st.booleans()) else c for c in word)
    return draw(_affix) + word + draw(_affix)


@st.composite
def _secret_url(draw: st.DrawFn) -> tuple[str, str]:
    """(url, secret): the secret as a secret-keyed query value or a userinfo password."""
    secret = draw(_secret)
    scheme = draw(st.sampled_from(["http", "https", "swift+https", "s3"]))
    path = "/" + draw(_plain) + "/img"
    before = draw(st.lists(st.tuples(_plain, _plain), max_size=2))
    after = draw(st.lists(st.tuples(_plain, _plain), max_size=2))
    if draw(st.booleans()):
        user = draw(_plain)
        query = "&".join(f"{k}={v}" for k, v in before)
        return f"{scheme}://{user}:{secret}@host.example:8080{path}?{query}", secret
    pairs = [*before, (draw(_secret_key()), secret), *after]
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{scheme}://host.example{path}?{query}", secret


def _renderings(url: str) -> list[str]:
    """Every way a location URL reaches a person or a program."""
    loc = Location(url)
    score = Score(loc, rank=1, score=1.0, usable=False, reasons=Reasons(error=f"{url}: HTTP 500"))
    exc = LocationUnreachable(f"{url}: connection refused", url=url)
    attempt = Attempt(url=loc.display_url, outcome="failed", error=str(exc))
    return [
        redact_url(url),
        loc.display_url,
        repr(loc),
        json.dumps(score.to_json()),
        json.dumps(attempt.to_json()),
        str(exc),
        repr(exc),
        exc.url,
    ]


@settings(max_examples=300, deadline=None)
@given(_secret_url())
def test_no_generated_secret_survives_any_rendering(case: tuple[str, str]) -> None:
    """Property: a secret in a URL (secret-keyed query value, userinfo) is in no rendering."""
    url, secret = case
    for text in _renderings(url):
        assert secret not in text, text
    assert REDACTED in redact_url(url)


@settings(max_examples=150, deadline=None)
@given(_secret_url(), st.sampled_from(LIBRARY_LOGGERS))
def test_no_generated_secret_survives_a_log_line(case: tuple[str, str], name: str) -> None:
    """Property: whatever library logger records a URL (as httpx does, with an httpx.URL
    argument), the line an application's handler writes does not carry the secret."""
    url, secret = case
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        arg: object = httpx.URL(url) if url.startswith("http") else url
        logging.getLogger(name).info(
            'HTTP Request: %s %s "%s %d %s"', "GET", arg, "HTTP/1.1", 200, "OK"
        )
        logging.getLogger(name).debug("request headers={'X-Auth-Token': '%s'}", secret)
        logging.getLogger(name).debug(
            "REQ: curl -g -H 'X-Subject-Token: %s' -H 'Accept: */*'", secret
        )
        logging.getLogger(name).debug("Authorization: Bearer %s", secret)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    assert secret not in out.getvalue(), out.getvalue()


def _best_of_3(text: str) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        redact_text(text)
        times.append(time.perf_counter() - t0)
    return min(times)


@pytest.mark.parametrize(
    "unit", ["a", "token", "x-", "'k': ", "a=b&", "%3D", "X-a: ", "x-token", "http://a"]
)
def test_redaction_is_linear_on_hostile_text(unit: str) -> None:
    """A server-chosen reason phrase or URL cannot make scrubbing quadratic: ten times the
    text costs well under a hundred times the time (measured against itself)."""
    small = unit * (4000 // len(unit))
    ratio = _best_of_3(small * 10) / max(_best_of_3(small), 1e-6)
    assert ratio < 40, ratio


def test_cli_verbose_download_and_rank_json_leak_no_secret(tmp_path: Path) -> None:
    """`download --verbose` (httpx's request lines) and `rank --json` name the location only."""
    data = os.urandom(50_000)
    secrets = ["tk-Qa81jd0Zm", "sg-Lm29sk4Pa"]
    with Origin(data) as origin:
        url = f"{origin.url}?access_token={secrets[0]}&X-Goog-Signature={secrets[1]}"
        # Two copies over max_sources = 1, so that they are probed (httpx logs the probes'
        # request lines; the engine's own requests go through http.client).
        meta = write_record(tmp_path / "m.json", image_record("img", data, [url, url + "&n=2"]))
        conf = tmp_path / "c.toml"
        conf.write_text("[transfer]\nmax_sources = 1\n")
        down = run_cli(
            "download", "img", str(tmp_path / "d"), "--metadata", str(meta), "-v",
            "--config", str(conf),
        )  # fmt: skip
        rank = run_cli("rank", "img", "--metadata", str(meta), "--json")
    assert down.returncode == 0 and rank.returncode == 0, down.stderr + rank.stderr
    assert "HTTP Request" in down.stderr
    for secret in secrets:
        assert secret not in down.stdout + down.stderr + rank.stdout + rank.stderr
    assert all("access_token=***" in row["url"] for row in json.loads(rank.stdout))


def test_importing_locpick_installs_nothing_in_logging() -> None:
    """A program that imports locpick (every module) keeps its logging as it set it up: the
    record factory and the libraries' loggers are untouched until a Client or the CLI runs."""
    script = (
        "import logging, pkgutil, importlib, sys\n"
        "factory = logging.getLogRecordFactory()\n"
        "import locpick\n"
        "for m in pkgutil.walk_packages(locpick.__path__, 'locpick.'):\n"
        "    if m.name != 'locpick.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "assert logging.getLogRecordFactory() is factory, 'record factory replaced at import'\n"
        "for name in ('locpick', 'httpx', 'httpcore'):\n"
        "    assert not logging.getLogger(name).filters, name\n"
        "import locpick.client, locpick.config.env\n"
        "locpick.client.Client(env=locpick.config.env.Environment.from_os()).close()\n"
        "assert logging.getLogRecordFactory() is not factory, 'a Client installs redaction'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_scrubber_is_bounded_and_keeps_the_newest() -> None:
    """A long-lived process learns a new token per renewal: the scrubber keeps the last
    ``limit`` secrets, and the newest is always scrubbed."""
    scrub = Redactor(limit=8)
    for i in range(100):
        scrub.add(f"token-{i:04d}-value")
    assert len(scrub._secrets) <= 8
    assert scrub("x token-0099-value y") == "x *** y"
    assert scrub("x token-0000-value y") == "x token-0000-value y"
