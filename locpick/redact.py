"""Keep secrets out of everything a person or a program can read: logs, errors, JSON, history."""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Mapping

_SECRET_QUERY_KEYS = frozenset(
    {
        "token",
        "x-auth-token",
        "signature",
        "sig",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "temp_url_sig",
        "password",
        "key",
        "secret",
        "awsaccesskeyid",
    }
)
REDACTED = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with userinfo and secret-looking query values replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return SCRUB(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode(
            [(k, REDACTED if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
            safe="*,",
        )
    return SCRUB(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


#: A cache capability token (locpick.capability) wherever it appears, e.g. in a URL path.
_CAPABILITY = re.compile(r"\blpc1_[A-Za-z0-9_-]{20,}")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def _redact_userinfo_text(text: str) -> str:
    return _USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)


class Redactor:
    """Scrubs known secret strings (tokens, passwords, keys) and URL userinfo from text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *secrets: str | None) -> None:
        for secret in secrets:
            if secret and len(secret) >= 4:
                self._secrets.add(secret)
                quoted = urllib.parse.quote(secret, safe="")
                if quoted != secret:
                    self._secrets.add(quoted)

    def __call__(self, text: str) -> str:
        text = _CAPABILITY.sub("lpc1_" + REDACTED, _redact_userinfo_text(text))
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text


#: Process-wide scrubber: every secret locpick learns (tokens, passwords) is registered here
#: so that no message, log record or JSON document can carry it.
SCRUB = Redactor()


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message and scrubs it with ``SCRUB``.

    Attached to the ``locpick`` logger (records logged there are scrubbed whatever handler the
    application installs) and to the CLI's handler (which also sees third-party records, e.g.
    httpx's request lines carrying URLs).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is passed through unchanged
            return True
        scrubbed = SCRUB(message)
        if record.exc_info and record.exc_info[1] is not None:
            # The traceback text is rendered later by the formatter: render and scrub it now.
            record.exc_text = SCRUB(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        record.msg = scrubbed
        record.args = None
        return True


def register_env_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Teach ``SCRUB`` the secrets that the standard environment may hold."""
    env = os.environ if environ is None else environ
    SCRUB.add(*(env.get(name) for name in SECRET_ENV))


#: Environment variables whose values are secrets (OpenStack, AWS).
SECRET_ENV = (
    "OS_AUTH_TOKEN",
    "OS_TOKEN",
    "OS_PASSWORD",
    "OS_APPLICATION_CREDENTIAL_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)

logging.getLogger("locpick").addFilter(RedactingFilter())
