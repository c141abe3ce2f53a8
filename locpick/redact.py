"""Keep secrets out of everything a person or a program can read: logs, errors, JSON, history."""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

#: A query key (or ``key=value`` / ``'key': value`` in text) naming a secret contains one of
#: these, in any case: ``access_token``, ``X-Goog-Signature``, ``api_key``, ``sessionid`` ...
SECRET_WORDS = ("token", "sig", "key", "secret", "passw", "credential", "session", "auth")
REDACTED = "***"


def secret_key(key: str) -> bool:
    """True for a query/header/field name whose value is a secret (see ``SECRET_WORDS``)."""
    low = key.lower()
    return any(word in low for word in SECRET_WORDS)


def redact_url(url: str) -> str:
    """Return ``url`` with userinfo and secret-looking query values replaced by ``***``."""
    return SCRUB(_redact_url(url))


def _redact_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode(
            [(k, REDACTED if secret_key(k) else v) for k, v in pairs], safe="*,"
        )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# Every pattern starts only where a run of its characters starts (a lookbehind) and decides
# "is this key secret?" in Python: linear time on hostile text (no nested backtracking).
#: A cache capability token (locpick.cache.capability) wherever it appears, e.g. in a URL path.
_CAPABILITY = re.compile(r"\blpc1_[A-Za-z0-9_-]{20,}")
_USERINFO = re.compile(r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
#: ``key=value``: query strings (in URLs or not), fields of signed Authorization headers.
_PAIR = re.compile(r"(?<![\w.%-])(?P<key>[\w.%-]+)(?P<eq>=|%3[dD])(?P<value>[^&\s\"'<>]+)")
#: ``'key': 'value'`` / ``"key": b"value"``: dict and JSON renderings.
_QUOTED = re.compile(
    r"(?P<q>['\"])(?P<key>[^'\"\n]*)(?P=q)(?P<sep>\s*:\s*b?)(?P<q2>['\"])(?P<value>[^'\"\n]*)(?P=q2)"
)
#: An HTTP Authorization value (Bearer/Basic credentials).
_AUTHZ = re.compile(r"\b(?P<kind>Bearer|Basic|Negotiate)\s+[A-Za-z0-9._~+/=-]{6,}")
#: A header line (``X-Auth-Token: ...`` in curl-style request logs).
_HEADER = re.compile(r"(?<![\w-])(?P<key>[\w-]+)(?P<sep>[ \t]*:[ \t]*)(?P<value>[^\s'\",;]+)")


def _mask(match: re.Match[str]) -> str:
    """The match with its ``value`` group replaced by ``***`` when its ``key`` is secret."""
    key = match.group("key")
    if not secret_key(key) or (match.re is _HEADER and "-" not in key):
        return match.group(0)
    start, end = match.span("value")
    base = match.start()
    text = match.group(0)
    return text[: start - base] + REDACTED + text[end - base :]


def redact_text(text: str) -> str:
    """Scrub secret-shaped parts of free text: URL userinfo, secret-keyed pairs, credentials.

    Each pattern runs only when the text holds what it needs (most log lines and notes hold
    no secret word at all): ranking 20,000 locations prints as many URLs."""
    if "@" in text and "://" in text:
        text = _USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    if ("Bearer" in text or "Basic" in text or "Negotiate" in text) and _AUTHZ.search(text):
        text = _AUTHZ.sub(lambda m: m.group("kind") + " " + REDACTED, text)
    low = text.lower()
    if not any(word in low for word in SECRET_WORDS):
        return text
    if "=" in text or "%3" in text:
        text = _PAIR.sub(_mask, text)
    if ":" in text:
        if "'" in text or '"' in text:
            text = _QUOTED.sub(_mask, text)
        text = _HEADER.sub(_mask, text)
    return text


class Redactor:
    """Scrubs known secret strings (tokens, passwords, keys) and secret-shaped text (URL
    userinfo, secret-keyed query values and fields, Authorization credentials).

    Bounded: it remembers the ``limit`` secrets learned last (a long-lived ``serve`` sees a new
    token per renewal); an older one forgotten is still caught by the shapes above wherever it
    appears as a credential."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._secrets: dict[str, None] = {}
        self._lock = threading.Lock()
        self._longest_first: list[str] = []

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            for secret in secrets:
                if secret and len(secret) >= 4:
                    for form in {secret, urllib.parse.quote(secret, safe="")}:
                        self._secrets.pop(form, None)
                        self._secrets[form] = None
            while len(self._secrets) > self.limit:
                del self._secrets[next(iter(self._secrets))]
            self._longest_first = sorted(self._secrets, key=len, reverse=True)

    def known(self) -> tuple[str, ...]:
        """The secrets remembered now, oldest first."""
        with self._lock:
            return tuple(self._secrets)

    def reset(self, secrets: tuple[str, ...] = ()) -> None:
        """Forget every secret but ``secrets`` (e.g. what :meth:`known` returned earlier)."""
        with self._lock:
            self._secrets.clear()
            self._longest_first = []
        self.add(*secrets)

    def __call__(self, text: str) -> str:
        text = redact_text(text)
        if "lpc1_" in text:
            text = _CAPABILITY.sub("lpc1_" + REDACTED, text)
        for secret in self._longest_first:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


#: Process-wide scrubber: every secret locpick learns (tokens, passwords) is registered here
#: so that no message, log record or JSON document can carry it.
SCRUB = Redactor()


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message and scrubs it with ``SCRUB``.

    Attached to the loggers in ``REDACTED_LOGGERS`` and to the CLI's handler. Logger filters
    do not apply to records of child loggers (``httpcore.http11``, ``botocore.endpoint``), so
    the record factory that :func:`install_log_redaction` installs scrubs those as they are
    created.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


def scrub_record(record: logging.LogRecord) -> None:
    """Render ``record``'s message and traceback now, scrubbed; idempotent."""
    if getattr(record, "_locpick_scrubbed", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken record is passed through unchanged
        return
    if record.exc_info and record.exc_info[1] is not None:
        # The traceback text is rendered later by the formatter: render and scrub it now.
        record.exc_text = SCRUB(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = SCRUB(record.exc_text)
    record.msg = SCRUB(message)
    record.args = None
    record.__dict__["_locpick_scrubbed"] = True


#: Loggers whose records may carry location URLs or credentials: locpick's own and those of
#: the libraries it drives (with every child logger, e.g. ``httpcore.http11``).
REDACTED_LOGGERS = ("locpick", "httpx", "httpcore", "botocore", "s3fs", "keystoneauth")


def _covered(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in REDACTED_LOGGERS)


def install_log_redaction() -> None:
    """Scrub every record of ``REDACTED_LOGGERS`` (and their children), whatever handlers the
    application installs: a filter on each logger, and a record factory that scrubs records of
    child loggers as they are created (chained to the factory in place; installed once).

    Nothing is installed at import: the edges call this (a ``Client``'s session, the CLI), so
    a program that only imports locpick keeps its logging exactly as it set it up."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_locpick", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _covered(record.name):
            scrub_record(record)
        return record

    factory._locpick = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def register_env_secrets(environ: Mapping[str, str]) -> None:
    """Teach ``SCRUB`` the secrets that the standard environment (read at the edge) may hold."""
    SCRUB.add(*(environ.get(name) for name in SECRET_ENV))


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
