"""Glance's S3 location URLs, as glance_store's ``_drivers/s3.py`` writes and reads them.

- ``s3://AK:SK@HOST/BUCKET/OBJ``: credentials in the URL, HOST is the endpoint, plain http
  (glance_store's meaning of ``s3``); ``s3+http://`` says the same, ``s3+https://`` uses TLS.
- ``s3://BUCKET/KEY`` (no userinfo): the AWS meaning, endpoint and credentials from config and
  the standard AWS environment.
- ``s3+http(s)://HOST/BUCKET/OBJ`` (no userinfo): the endpoint is in the URL but the
  credentials would be the operator's own, so it is usable only with ``[s3] location_endpoint``.

The secret may contain ``/`` (glance_store quotes it with ``/`` left as is), so the userinfo is
cut at the last ``@`` rather than by ``urlsplit``. Both keys are registered with ``SCRUB``.
"""

from __future__ import annotations

import urllib.parse

import attrs

from locpick.redact import SCRUB

GLANCE_S3_SCHEMES = ("s3+http", "s3+https")
ALL_S3_SCHEMES = ("s3", "s3a", *GLANCE_S3_SCHEMES)


@attrs.frozen
class S3Target:
    """Where one S3 object is, and with which credentials (hidden from repr)."""

    bucket: str
    key: str
    #: ``http(s)://HOST`` from the URL itself; None = config / AWS environment.
    endpoint: str | None = None
    access_key: str | None = attrs.field(default=None, repr=False)
    secret_key: str | None = attrs.field(default=None, repr=False)

    @property
    def path(self) -> str:
        return f"{self.bucket}/{self.key}"


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """(scheme, userinfo or None, rest) of a Glance S3 URL, userinfo cut at the last ``@``
    before the query."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL")
    body, _q, _query = rest.partition("?")
    if "@" in body:
        creds, tail = body.rsplit("@", 1)
        return scheme.lower(), creds, tail
    return scheme.lower(), None, body


def parse_s3_url(url: str) -> S3Target:
    """The target of an ``s3``/``s3a``/``s3+http``/``s3+https`` URL; ValueError if malformed."""
    scheme, creds, rest = split_userinfo(url)
    access = secret = None
    if creds is not None:
        user, sep, password = creds.partition(":")
        if not sep or not user or not password:
            raise ValueError("S3 credentials must be ACCESS_KEY:SECRET_KEY")
        access, secret = urllib.parse.unquote(user), urllib.parse.unquote(password)
        SCRUB.add(secret, password, access, user)
    has_host = creds is not None or scheme in GLANCE_S3_SCHEMES
    if has_host:
        host, _, path = rest.partition("/")
        bucket, _, key = path.partition("/")
        if not host:
            raise ValueError("URL has no S3 host")
        http = "https" if scheme == "s3+https" else "http"
        endpoint: str | None = f"{http}://{host}"
    else:
        bucket, _, key = rest.partition("/")
        endpoint = None
    if not bucket:
        raise ValueError("URL has no bucket")
    if not key.strip("/"):
        raise ValueError("URL has no object key")
    return S3Target(
        bucket=urllib.parse.unquote(bucket),
        key=urllib.parse.unquote(key),
        endpoint=endpoint,
        access_key=access,
        secret_key=secret,
    )


def display_s3_url(url: str) -> str:
    """The URL with its userinfo replaced by ``***`` (even a secret holding ``/``)."""
    try:
        scheme, creds, rest = split_userinfo(url)
    except ValueError:
        return SCRUB(url)
    if creds is None:
        return SCRUB(url)
    query = url.partition("?")[2]
    return SCRUB(f"{scheme}://***@{rest}" + (f"?{query}" if query else ""))


def register_s3_secrets(url: str) -> None:
    """Teach ``SCRUB`` the keys in an S3 URL's userinfo (done when a Location is created)."""
    try:
        parse_s3_url(url)
    except ValueError:
        try:
            _scheme, creds, _rest = split_userinfo(url)
        except ValueError:
            return
        if creds:
            SCRUB.add(creds, *creds.split(":", 1))
