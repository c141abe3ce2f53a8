"""Capability URLs for cached images: whoever can read the location in Glance can fetch it.

A node keeps a random secret (``DIR/.secret``, 32 bytes, mode 0600, owned by the node's user,
created on first use). The location it registers for image ``ID`` is
``{public_url}/images/{ID}/{token}`` where ``token`` is ``lpc1_`` + base64url(HMAC-SHA256(secret,
ID)). ``locpick serve`` recomputes the token and compares in constant time. The token sits in
the *path*, not the query: Glance's http store drops the query when it checks a new location
(``StoreLocation.get_uri``), so a query token would make Glance refuse the registration. The
``lpc1_`` prefix lets the redactor mask it in every log line and message.

Rotation writes a new secret (every old URL stops working at once) and re-registers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from locpick.errors import InputError

SECRET_NAME = ".secret"  # noqa: S105 - a file name, not a password
SECRET_BYTES = 32
PREFIX = "lpc1_"
#: A token as it appears in a URL path (also what the redactor masks).
TOKEN_RE = re.compile(r"lpc1_[A-Za-z0-9_-]{43}")
_CONTEXT = b"locpick-cache-location-v1\0"


class UntrustedCache(InputError):
    """The cache directory, an entry or the secret could have been written by someone else."""


def image_token(secret: bytes, image_id: str) -> str:
    """The capability token of ``image_id`` under ``secret``."""
    mac = hmac.new(secret, _CONTEXT + image_id.encode("utf-8"), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def token_matches(secret: bytes, image_id: str, token: str) -> bool:
    """Constant-time check of a presented token."""
    return hmac.compare_digest(image_token(secret, image_id).encode(), token.encode("utf-8"))


def _read(path: Path) -> bytes | None:
    """The secret at ``path`` (None when absent); refused unless ours, private and regular."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UntrustedCache(f"cache secret {path}: cannot open ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise UntrustedCache(
                f"cache secret {path}: must be a regular file owned by uid {os.geteuid()} "
                f"with mode 0600 (found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
            )
        data = fh.read(SECRET_BYTES + 1)
    if len(data) != SECRET_BYTES:
        raise UntrustedCache(f"cache secret {path}: not {SECRET_BYTES} bytes; rotate it")
    return data


def _write_new(directory: Path) -> Path:
    """A fresh secret in a private temp file of ``directory``; the caller renames or links it."""
    tmp = directory / f".secret.{secrets.token_hex(8)}.locpick-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(SECRET_BYTES))
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def load_secret(directory: Path) -> bytes:
    """This node's secret, created (0600, atomically, race-free) on first use."""
    path = directory / SECRET_NAME
    found = _read(path)
    if found is not None:
        return found
    tmp = _write_new(directory)
    try:
        with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink()
    found = _read(path)
    assert found is not None
    return found


def rotate_secret(directory: Path) -> bytes:
    """Replace the secret: every URL made with the old one is refused from now on."""
    tmp = _write_new(directory)
    try:
        os.replace(tmp, directory / SECRET_NAME)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    found = _read(directory / SECRET_NAME)
    assert found is not None
    return found


class SecretFile:
    """The secret as ``serve`` sees it: re-read when the file changes (rotation, no restart)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SECRET_NAME
        self._key: tuple[int, int, int] | None = None
        self._secret = load_secret(directory)

    def current(self) -> bytes:
        st = os.stat(self.path, follow_symlinks=False)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            secret = _read(self.path)
            if secret is None:
                raise UntrustedCache(f"cache secret {self.path}: vanished")
            self._secret, self._key = secret, key
        return self._secret
