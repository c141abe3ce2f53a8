"""s3:// (and other fsspec) locations against a real S3 endpoint on loopback (moto server mode)."""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_s3 import BUCKET, REGION, MotoS3
from helpers import image_record, run_cli, temp_leftovers, write_record

import locpick
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.config.load import load_config
from locpick.config.model import Config, Policy, ProbeConfig, SecurityConfig
from locpick.config.stores import S3Config
from locpick.errors import ConfigError
from locpick.models import Image, Location
from locpick.s3url import parse_s3_url
from locpick.transports.base import Context
from locpick.transports.fsspec.transport import FsspecTransport

DATA = os.urandom(3 * 1024 * 1024 + 321)
CFG = Config(probe=ProbeConfig(deadline=5.0))
GLANCE_ONLY = [
    "swift://acct:user:pw@keystone/v3/container/obj",
    "swift+https://keystone.example/v3/container/obj",
    "rbd://fsid/pool/image/snap",
    "cinder://volume-id",
    "vsphere://vc.example/folder/image?dcPath=dc&dsName=ds",
]


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """Point the standard AWS environment of this process at the moto server."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return moto_s3


def _rank(args: list[str], env: dict[str, str]) -> dict[str, dict[str, object]]:
    out = run_cli("rank", *args, "--json", env=env)
    assert out.returncode == 0, out.stderr
    return {row["url"]: row for row in json.loads(out.stdout)}


def test_download_and_verify_from_s3(moto_s3: MotoS3, tmp_path: Path) -> None:
    """The CLI downloads an s3:// location (endpoint from AWS_ENDPOINT_URL), sha512-verified."""
    url = moto_s3.put("full.raw", DATA)
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [url]))
    dest = tmp_path / "out"
    out = run_cli(
        "download", "img", str(dest), "--metadata", str(meta), "--json", env=moto_s3.env()
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["source_url"] == url
    assert result["verified"] == "sha512"
    assert result["bytes"] == len(DATA)
    assert dest.read_bytes() == DATA
    assert temp_leftovers(tmp_path) == []
    verify = run_cli("verify", "img", "--metadata", str(meta), "--json", env=moto_s3.env())
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["locations"][0]["status"] == "ok"


def test_resume_from_http_onto_s3(aws_env: MotoS3, tmp_path: Path) -> None:
    """An http transfer cut midway is finished from the s3 copy (the pieces http lacks)."""
    url = aws_env.put("resume.raw", DATA)
    cut = len(DATA) // 2
    cfg = Config(probe=ProbeConfig(deadline=5.0), policy=Policy(prefer_schemes=("http",)))
    with Origin(DATA, faults=Faults(cut_at_offset=cut)) as origin:
        http_url = origin.url
        rec = image_record("img", DATA, [url, http_url])
        result = locpick.download("img", tmp_path / "out", metadata=rec, config=cfg)
    # one engine: the s3 copy (no bounded ranges: read from its offset, cut off when done)
    # takes the pieces the cut http copy does not deliver
    shares = {s.url: s.bytes for s in result.sources}
    assert sum(shares.values()) == len(DATA) and shares.get(url, 0) > 0, result.attempts
    assert result.verified == "sha512"
    assert (tmp_path / "out").read_bytes() == DATA


def test_resume_from_s3_offset_reads_only_the_rest(aws_env: MotoS3) -> None:
    """open(offset=N) on s3 delivers exactly the bytes from N on."""
    url = aws_env.put("offset.raw", DATA)
    image = Image(id="img", size=len(DATA))
    with locpick.Client(config=CFG) as client:
        transport = FsspecTransport(Context(client.config))
        stream = transport.open(Location(url), image, offset=1_000_001)
        buf = bytearray(len(DATA))
        n, total = 0, 0
        while (n := stream.readinto(memoryview(buf)[total:])) > 0:
            total += n
        stream.close()
    assert stream.start == 1_000_001
    assert stream.total == len(DATA)
    assert bytes(buf[:total]) == DATA[1_000_001:]


def test_missing_key_unusable_with_reason(moto_s3: MotoS3, tmp_path: Path) -> None:
    """A missing object is listed unusable (HTTP 404), verify says missing, download goes on."""
    good = moto_s3.put("present.raw", DATA)
    gone = "s3://images/absent.raw"
    nobucket = "s3://no-such-bucket/x.raw"
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [gone, nobucket, good]))
    rows = _rank(["img", "--metadata", str(meta)], moto_s3.env())
    assert rows[gone]["usable"] is False
    assert "no such object (HTTP 404)" in str(rows[gone]["reasons"]["error"])  # type: ignore[index]
    assert rows[nobucket]["usable"] is False
    assert rows[good]["usable"] is True
    verify = run_cli("verify", "img", "--metadata", str(meta), "--json", env=moto_s3.env())
    statuses = {r["url"]: r["status"] for r in json.loads(verify.stdout)["locations"]}
    assert statuses[gone] == "missing"
    assert statuses[good] == "ok"
    assert verify.returncode == 3
    out = run_cli(
        "download",
        "img",
        str(tmp_path / "out"),
        "--metadata",
        str(meta),
        "--json",
        env=moto_s3.env(),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["source_url"] == good


@pytest.mark.parametrize("which", ["secret", "key_id"])
def test_wrong_credentials_unusable_and_never_shown(
    moto_s3: MotoS3, tmp_path: Path, which: str
) -> None:
    """Wrong keys: unusable with an access-denied reason; no key appears in any output."""
    url = moto_s3.put("creds.raw", DATA)
    wrong = "WrongSecretKeyDoNotPrint0123456789abcdef"
    env = (
        moto_s3.env(secret=wrong)
        if which == "secret"
        else moto_s3.env(key_id="AKIANOTAREALKEY12345")
    )
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [url]))
    rank = run_cli("rank", "img", "--metadata", str(meta), "--json", env=env)
    assert rank.returncode == 0, rank.stderr
    [row] = json.loads(rank.stdout)
    assert row["usable"] is False
    assert "access denied (HTTP 403)" in row["reasons"]["error"]
    dest = tmp_path / "out"
    dest.write_bytes(b"before")
    out = run_cli("download", "img", str(dest), "--metadata", str(meta), env=env)
    assert out.returncode == 3
    assert url in out.stderr and "access denied" in out.stderr
    assert dest.read_bytes() == b"before"
    assert temp_leftovers(tmp_path) == []
    for text in (rank.stdout, rank.stderr, out.stdout, out.stderr):
        assert wrong not in text
        assert moto_s3.secret not in text
        assert "AKIANOTAREALKEY12345" not in text
        assert moto_s3.key_id not in text


def test_glance_only_schemes_listed_unsupported(moto_s3: MotoS3, tmp_path: Path) -> None:
    """rbd/cinder/vsphere are 'unsupported scheme, needs ...'; swift here unusable; s3 delivers."""
    url = moto_s3.put("mixed.raw", DATA)
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [*GLANCE_ONLY, url]))
    # The swift row fails in its probe (Keystone at a host that does not exist): on a loaded
    # box importing keystoneauth alone can outlast the default 2 s deadline, and a location
    # still silent at the deadline stays a usable fallback. A long deadline costs nothing here
    # (the phase ends as soon as every probe has answered) and lets the failure be seen.
    config = tmp_path / "c.toml"
    config.write_text('history_file = ""\n[probe]\ndeadline = 60.0\n')
    env = {**moto_s3.env(), "LOCPICK_CONFIG": str(config)}
    rows = _rank(["img", "--metadata", str(meta)], env)
    assert len(rows) == len(GLANCE_ONLY) + 1
    ordered = sorted(rows.values(), key=lambda r: int(r["rank"]))  # type: ignore[call-overload]
    assert ordered[0]["url"] == url
    for row in ordered[1:]:
        assert row["usable"] is False, json.dumps(row)
        error = str(row["reasons"]["error"])  # type: ignore[index]
        if str(row["url"]).startswith("swift"):
            # Swift has its own transport (tests/test_transports_swift.py); no such hosts.
            assert error and "pw" not in error
        elif str(row["url"]).startswith("rbd"):
            # the rbd transport (tests/test_transports_rbd.py): no Ceph client, or no cluster
            assert error.startswith(("unsupported scheme", "Ceph config")), error
        else:
            assert error.startswith("unsupported scheme") and "needs" in error
        assert ":pw@" not in str(row["url"])
    out = run_cli(
        "download",
        "img",
        str(tmp_path / "out"),
        "--metadata",
        str(meta),
        "--json",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    skipped = [a["url"] for a in result["attempts"] if a["outcome"] == "skipped"]
    # rbd (no Ceph config here), cinder, vsphere: refused before any I/O, always. The swift rows
    # fail inside their probe
    # (no such Keystone): on a loaded box the s3 copy may deliver before that probe has ended,
    # and then they are simply not attempted; either way they carry no bytes.
    assert len([u for u in skipped if not u.startswith("swift")]) == len(GLANCE_ONLY) - 2
    for attempt in result["attempts"]:
        if str(attempt["url"]).startswith("swift"):
            assert attempt["outcome"] in ("skipped", "failed") and not attempt.get("bytes")
    assert result["source_url"] == url
    assert (tmp_path / "out").read_bytes() == DATA


def test_missing_s3fs_names_the_extra(moto_s3: MotoS3, tmp_path: Path) -> None:
    """Without s3fs importable, an s3 location is unusable with 'install locpick[s3]'."""
    shadow = tmp_path / "shadow" / "s3fs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 's3fs'\")\n")
    url = moto_s3.put("noext.raw", DATA)
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [url]))
    env = {**moto_s3.env(), "PYTHONPATH": str(tmp_path / "shadow")}
    rows = _rank(["img", "--metadata", str(meta)], env)
    error = str(rows[url]["reasons"]["error"])  # type: ignore[index]
    assert rows[url]["usable"] is False
    assert "unsupported scheme 's3'" in error and "locpick[s3]" in error
    out = run_cli("download", "img", str(tmp_path / "out"), "--metadata", str(meta), env=env)
    assert out.returncode == 3
    assert "locpick[s3]" in out.stderr


def test_endpoint_from_config_and_from_location_metadata(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without AWS_ENDPOINT_URL the endpoint comes from [s3] endpoint_url or location metadata."""
    url = moto_s3.put("ep.raw", DATA)
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    by_config = Config(probe=CFG.probe, s3=S3Config(endpoint_url=moto_s3.endpoint))
    result = locpick.download(
        "img", tmp_path / "a", metadata=image_record("img", DATA, [url]), config=by_config
    )
    assert result.source_url == url
    assert (tmp_path / "a").read_bytes() == DATA
    rec = image_record("img", DATA, [(url, {"endpoint_url": moto_s3.endpoint})])
    by_meta = Config(probe=CFG.probe, s3=S3Config(location_endpoint=True))
    result = locpick.download("img", tmp_path / "b", metadata=rec, config=by_meta)
    assert (tmp_path / "b").read_bytes() == DATA
    no_meta = Config(
        probe=CFG.probe, s3=S3Config(location_endpoint=False, endpoint_url="http://127.0.0.1:9")
    )
    [score] = locpick.rank("img", metadata=rec, config=no_meta)
    assert score.usable is False


def test_s3_config_section_parsed_and_checked(tmp_path: Path) -> None:
    """[s3] keys load into Config; an unknown key is a config error (exit 2)."""
    good = tmp_path / "good.toml"
    good.write_text('[s3]\nendpoint_url = "http://127.0.0.1:9000"\nregion = "eu-1"\n')
    cfg = load_config(good)
    assert cfg.s3 == S3Config(endpoint_url="http://127.0.0.1:9000", region="eu-1")
    bad = tmp_path / "bad.toml"
    bad.write_text('[s3]\nendpoint = "x"\n')
    with pytest.raises(ConfigError, match="endpoint"):
        load_config(bad)
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, ["s3://b/k"]))
    out = run_cli("rank", "img", "--metadata", str(meta), "--config", str(bad))
    assert out.returncode == 2


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("s3:///key", "no bucket"),
        ("s3://bucket", "no object key"),
        ("s3://bucket/", "no object key"),
    ],
)
def test_malformed_s3_urls_refused_without_io(url: str, reason: str) -> None:
    """check() refuses s3 URLs without bucket or key before any request."""
    transport = FsspecTransport(Context(Config()))
    assert reason in (transport.check(Location(url), Image(id="i", size=1)) or "")


def test_forbidden_endpoint_network_refused() -> None:
    """A metadata endpoint in a forbidden network (link-local) is refused by check()."""
    transport = FsspecTransport(Context(Config(s3=S3Config(location_endpoint=True))))
    loc = Location("s3://b/k", metadata={"endpoint_url": "http://169.254.169.254/"})
    assert "forbidden network" in (transport.check(loc, Image(id="i", size=1)) or "")


def test_uninstalled_fsspec_protocol_names_its_package() -> None:
    """Another fsspec protocol whose package is absent is unusable, naming the package."""
    transport = FsspecTransport(Context(Config()))
    reason = transport.check(Location("oci://bucket@ns/key"), Image(id="i", size=1))
    if importlib.util.find_spec("ocifs") is None:
        assert reason is not None
        assert reason.startswith("unsupported scheme 'oci', needs ocifs")
    else:
        assert reason is None


class SigningRecorder:
    """A relay in front of the S3 endpoint that records each request's Authorization header
    (the SigV4 credential scope names the region the request was signed for)."""

    def __init__(self, upstream: str) -> None:
        target = urllib.parse.urlsplit(upstream)
        recorder = self
        self.authorizations: list[str] = []

        class Relay(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                recorder.authorizations.append(self.headers.get("Authorization", ""))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    conn.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        conn.putheader(name, value)  # Host too: it is signed
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                head = self.command == "HEAD"  # keeps the object's own Content-Length
                for name, value in resp.getheaders():
                    skip = ("transfer-encoding", "connection") + (
                        () if head else ("content-length",)
                    )
                    if name.lower() not in skip:
                        self.send_header(name, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def scopes(self) -> set[str]:
        """The ``REGION/s3`` parts of the credential scopes seen."""
        found = (re.search(r"Credential=[^/]+/\d+/([^/]+/s3)/", a) for a in self.authorizations)
        return {m.group(1) for m in found if m}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("region", "scope"), [("eu-west-3", "eu-west-3/s3"), ("", f"{REGION}/s3")])
def test_region_setting_reaches_client(aws_env: MotoS3, region: str, scope: str) -> None:
    """[s3] region is the region requests are signed for (else the AWS environment's)."""
    url = aws_env.put("region.raw", DATA)
    recorder = SigningRecorder(aws_env.endpoint)
    try:
        cfg = Config(probe=CFG.probe, s3=S3Config(endpoint_url=recorder.url, region=region or None))
        [score] = locpick.rank("img", metadata=image_record("img", DATA, [url]), config=cfg)
    finally:
        recorder.stop()
    assert score.usable, score.reasons
    assert score.reasons.latency_ms is not None
    assert recorder.authorizations, "no request went through the relay"
    assert recorder.scopes() == {scope}


# -- Glance's S3 location forms (glance_store _drivers/s3.py), moto with auth on -----------------
# ``s3://AK:SK@HOST/BUCKET/OBJ`` (plain http), ``s3+http://`` and ``s3+https://``: the
# credentials come from the URL and never appear in any output. Kept in this module: moto's
# state is per process, so one MotoS3 serves every S3 test of a module.

GLANCE_DATA = os.urandom(700_000)
#: No AWS environment at all: what is used must come from the URL.
BARE = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_ENDPOINT_URL": "",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _glance_url(s3: MotoS3, scheme: str, key: str, *, secret: str | None = None) -> str:
    host = urllib.parse.urlsplit(s3.endpoint).netloc
    creds = f"{urllib.parse.quote(s3.key_id)}:{urllib.parse.quote(secret or s3.secret)}"
    return f"{scheme}://{creds}@{host}/{BUCKET}/{key}"


@pytest.mark.parametrize("scheme", ["s3", "s3+http"])
def test_glance_s3_url_downloads_with_its_own_credentials(
    moto_s3: MotoS3, tmp_path: Path, scheme: str
) -> None:
    moto_s3.put("glance-form.raw", GLANCE_DATA)
    url = _glance_url(moto_s3, scheme, "glance-form.raw")
    meta = write_record(tmp_path / "m.json", image_record("img", GLANCE_DATA, [url]))
    history = tmp_path / "history.json"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'history_file = "{history}"\n')
    rank = run_cli("rank", "img", "--metadata", str(meta), "--json", "--config", str(cfg), env=BARE)
    assert rank.returncode == 0, rank.stderr
    rows = json.loads(rank.stdout)
    assert rows[0]["usable"] is True, rows
    assert rows[0]["reasons"]["route"] == "direct"
    dest = tmp_path / "out.img"
    args = ("download", "img", str(dest), "--metadata", str(meta), "--json", "--verbose")
    r = run_cli(*args, "--config", str(cfg), env=BARE)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == GLANCE_DATA
    assert json.loads(r.stdout)["source_url"] == f"{scheme}://***@{url.rsplit('@', 1)[1]}"
    seen = rank.stdout + rank.stderr + r.stdout + r.stderr + history.read_text()
    for secret in (moto_s3.secret, urllib.parse.quote(moto_s3.secret), moto_s3.key_id):
        assert secret not in seen


def test_glance_s3_url_with_a_wrong_secret_is_refused_and_not_shown(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    moto_s3.put("glance-wrong.raw", GLANCE_DATA)
    wrong = "wrong/secret+value0123456789abcdefABCDEF"  # a '/' as real secret keys may hold
    url = _glance_url(moto_s3, "s3", "glance-wrong.raw", secret=wrong)
    meta = write_record(tmp_path / "m.json", image_record("img", GLANCE_DATA, [url]))
    r = run_cli("download", "img", str(tmp_path / "o"), "--metadata", str(meta), env=BARE)
    assert r.returncode == 3
    assert "403" in r.stderr or "denied" in r.stderr or "Signature" in r.stderr, r.stderr
    assert wrong not in r.stderr and urllib.parse.quote(wrong) not in r.stderr
    assert "wrong/" not in r.stderr


def test_url_forms_parse_as_glance_store_means_them() -> None:
    t = parse_s3_url("s3://AKIA1:se%2Fcr%2Bet@s3.example:8080/bkt/dir/obj")
    assert (t.endpoint, t.bucket, t.key) == ("http://s3.example:8080", "bkt", "dir/obj")
    assert (t.access_key, t.secret_key) == ("AKIA1", "se/cr+et")
    t = parse_s3_url("s3+https://AKIA1:with/slash@s3.example/bkt/obj")
    assert (t.endpoint, t.secret_key) == ("https://s3.example", "with/slash")
    t = parse_s3_url("s3://bkt/dir/obj")  # no userinfo: AWS's meaning
    assert (t.endpoint, t.bucket, t.key, t.access_key) == (None, "bkt", "dir/obj", None)
    loc = Location("s3://AKIA1:with/slash@s3.example/bkt/obj")
    assert loc.display_url == "s3://***@s3.example/bkt/obj"


def test_own_endpoint_without_credentials_is_refused_by_default(tmp_path: Path) -> None:
    """``s3+http://HOST/...`` without userinfo would send the operator's keys to HOST."""
    meta = write_record(
        tmp_path / "m.json",
        image_record("img", GLANCE_DATA, ["s3+http://attacker.example/bkt/obj"]),
    )
    r = run_cli("rank", "img", "--metadata", str(meta), "--json", env=BARE)
    rows = json.loads(r.stdout)
    assert rows[0]["usable"] is False
    assert "location_endpoint" in rows[0]["reasons"]["error"]


def test_s3_endpoint_takes_the_proxy_route(
    moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 client goes through the same proxy as every other location (botocore proxies)."""
    from fixtures_net import ForwardProxy

    moto_s3.put("proxied.raw", GLANCE_DATA)
    url = _glance_url(moto_s3, "s3", "proxied.raw")
    for name, value in BARE.items():
        monkeypatch.setenv(name, value)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        record = image_record("img", GLANCE_DATA, [url])
        ranking = locpick.rank("img", metadata=record)
        assert ranking.scores[0].reasons.route == f"via proxy {proxy.url}"
        locpick.download("img", tmp_path / "out", metadata=record)
        assert (tmp_path / "out").read_bytes() == GLANCE_DATA
        assert any("/images/proxied.raw" in target for _m, target in proxy.requests)
        assert proxy.relayed >= len(GLANCE_DATA)


def test_s3_endpoint_host_name_is_resolved_and_checked() -> None:
    """An endpoint given as a name is refused when the name resolves into a forbidden network."""
    cfg = Config(
        s3=S3Config(endpoint_url="http://localhost:9"),
        security=SecurityConfig(forbid_networks=("127.0.0.0/8", "::1/128")),
    )
    reason = FsspecTransport(Context(cfg)).check(Location("s3://bucket/key"), Image("i", 1))
    assert reason is not None and "forbidden network" in reason
