"""TLS trust: which CAs and client certificate a connection uses, chosen once from
``[tls]``, ``OS_CACERT``/clouds.yaml, ``SSL_CERT_FILE``/``SSL_CERT_DIR`` or the system store,
as one ``ssl.SSLContext`` and as the path forms requests/botocore take."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

import attrs

from locpick.config.model import Config
from locpick.errors import ConfigError


@attrs.frozen
class Trust:
    """Where certificates are checked against, and the client certificate, with where each
    setting came from (for messages)."""

    verify: bool = True
    ca_file: str | None = None
    ca_dir: str | None = None
    #: What chose the CAs: ``[tls] ca_file``, ``OS_CACERT``, ``SSL_CERT_FILE``, ... or "system".
    source: str = "system"
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The one SSLContext; ConfigError (exit 2) when a CA or client cert cannot be loaded."""
        if not self.verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file or self.ca_dir:
            where = self.ca_file or self.ca_dir
            if where and not os.access(where, os.R_OK):
                raise ConfigError(f"{self.source} {where}: CA certificates not readable")
            try:
                ctx = ssl.create_default_context(cafile=self.ca_file, capath=self.ca_dir)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{self.source} {where}: cannot load CA certificates ({exc})"
                ) from exc
        else:
            ctx = ssl.create_default_context()
            paths = ssl.get_default_verify_paths()
            if not _exists(paths.cafile) and not _exists(paths.capath):
                import certifi  # no system store on this node: fall back to certifi's bundle

                ctx.load_verify_locations(cafile=certifi.where())
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"client certificate {self.cert_file}: cannot load ({exc})"
                ) from exc
        return ctx

    def requests_verify(self) -> str | bool:
        """The same trust for libraries that take a path (keystoneauth/requests, botocore)."""
        if not self.verify:
            return False
        if self.ca_file or self.ca_dir:
            return self.ca_file or self.ca_dir or True
        paths = ssl.get_default_verify_paths()
        if _exists(paths.cafile):
            return str(paths.cafile)
        if _exists(paths.capath):
            return str(paths.capath)
        return True

    def requests_cert(self) -> str | tuple[str, str] | None:
        if self.cert_file and self.key_file:
            return (self.cert_file, self.key_file)
        return self.cert_file


def _exists(path: str | None) -> bool:
    return bool(path) and os.path.exists(path or "")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def trust_from(
    config: Config, env: Mapping[str, str], *, cloud_cacert: str | None = None, insecure: bool
) -> Trust:
    """CAs: ``[tls] ca_file`` > ``OS_CACERT`` / clouds.yaml ``cacert`` > ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` > the system store. Client certificate: ``[tls] cert_file``/``key_file``
    > ``OS_CERT``/``OS_KEY``. ``OS_INSECURE`` is ``--insecure``."""
    tls = config.tls
    verify = tls.verify and not insecure and not _truthy(env.get("OS_INSECURE"))
    cert = tls.cert_file or env.get("OS_CERT") or None
    key = tls.key_file or (env.get("OS_KEY") if not tls.cert_file else None) or None
    common: dict[str, Any] = {"verify": verify, "cert_file": cert, "key_file": key}
    if tls.ca_file:
        return Trust(ca_file=tls.ca_file, source="config [tls] ca_file", **common)
    if env.get("OS_CACERT"):
        return Trust(ca_file=env["OS_CACERT"], source="OS_CACERT", **common)
    if cloud_cacert:
        return Trust(ca_file=cloud_cacert, source="clouds.yaml cacert", **common)
    cafile, cadir = env.get("SSL_CERT_FILE") or None, env.get("SSL_CERT_DIR") or None
    if cafile or cadir:
        source = "SSL_CERT_FILE" if cafile else "SSL_CERT_DIR"
        return Trust(ca_file=cafile, ca_dir=cadir, source=source, **common)
    return Trust(**common)
