"""Which fsspec filesystem reads a location, built once per (scheme, options) and shared:
for S3 the endpoint (URL, metadata, config, environment), the operator's trust and route, and
the refusals that keep the operator's credentials away from an endpoint a location names."""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from typing import Any

from locpick.models import Location
from locpick.redact import SCRUB, redact_url
from locpick.s3url import S3Target, parse_s3_url
from locpick.transports.base import Context
from locpick.transports.fsspec.errors import S3_SCHEMES


class Filesystems:
    """The filesystem instances of one ``FsspecTransport``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Any] = {}

    def endpoint(self, location: Location) -> str | None:
        """The S3 endpoint for ``location``: the URL's own host (Glance's forms), else its
        metadata, else config, else the AWS env."""
        with contextlib.suppress(ValueError):
            target = parse_s3_url(location.url)
            if target.endpoint is not None:
                return target.endpoint
        s3 = self.ctx.config.s3
        meta = location.metadata.get("endpoint_url") if s3.location_endpoint else None
        if isinstance(meta, str) and meta:
            return meta
        return s3.endpoint_url

    def s3_reason(self, location: Location) -> str | None:
        try:
            target = parse_s3_url(location.url)
        except ValueError as exc:
            return str(exc)
        own = target.endpoint is not None and target.access_key is None
        if own and not self.ctx.config.s3.location_endpoint:
            return (
                "the URL names its own S3 endpoint without credentials; the operator's "
                "AWS credentials are not sent there unless [s3] location_endpoint = true"
            )
        meta = location.metadata.get("endpoint_url")
        if meta is not None and not isinstance(meta, str):
            return "metadata endpoint_url is not a string"
        endpoint = self.endpoint(location)
        if endpoint is not None:
            ep = urllib.parse.urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.hostname:
                return f"endpoint {redact_url(endpoint)} is not an http(s) URL"
            # botocore resolves and connects on its own: the name is resolved and checked here
            reason = self.ctx.net.check_host(ep.hostname, resolve=True)
            return f"endpoint {reason}" if reason else None
        return None

    def get(self, location: Location) -> tuple[Any, str]:
        """The (shared) filesystem instance for ``location`` and the path inside it."""
        import fsspec

        scheme = location.scheme
        t = self.ctx.config.transfer
        if scheme in S3_SCHEMES:
            cls = fsspec.get_filesystem_class("s3")
            target: S3Target = parse_s3_url(location.url)
            path = target.path
            s3 = self.ctx.config.s3
            endpoint = self.endpoint(location)
            net = self.ctx.net.botocore_options(endpoint)
            client_kwargs: dict[str, Any] = {"verify": net["verify"]}
            if s3.region:
                client_kwargs["region_name"] = s3.region
            config_kwargs: dict[str, Any] = {
                "connect_timeout": t.connect_timeout,
                "read_timeout": t.idle_timeout,
                "retries": {"max_attempts": 1},
            }
            if "proxies" in net:
                config_kwargs["proxies"] = net["proxies"]
            options: dict[str, Any] = {
                "endpoint_url": endpoint,
                "client_kwargs": client_kwargs,
                "config_kwargs": config_kwargs,
            }
            if target.access_key is not None:
                options.update(key=target.access_key, secret=target.secret_key)
            elif s3.profile:
                options["profile"] = s3.profile
        else:
            cls = fsspec.get_filesystem_class(scheme)
            options = dict(cls._get_kwargs_from_urls(location.url))
            path = cls._strip_protocol(location.url)
            password = urllib.parse.urlsplit(location.url).password
            SCRUB.add(password, options.get("password"))
        key = (scheme, repr(sorted(options.items())))
        with self._lock:
            fs = self._cache.get(key)
            if fs is None:
                fs = cls(skip_instance_cache=True, **options)
                if scheme in S3_SCHEMES:
                    fs.retries = max(1, t.retries + 1)
                self._cache[key] = fs
        return fs, path

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
