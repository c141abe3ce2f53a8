"""What one client shares between its parts: config, credentials, connection policy, pool.

Built once at the edge (:class:`~locpick.client.Client`) from the ``Config`` and the
``Environment``; the ranking, download and cache-sync parts take their values from it and read
no environment themselves. It is also where the image record and Glance's endpoint come from.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

from locpick.cache.store import NodeCache
from locpick.choose.history import History
from locpick.config.env import Environment
from locpick.config.model import Config, FleetConfig
from locpick.errors import ConfigError, ImageNotFound, InputError
from locpick.glance.auth import OpenStackAuth, auth_from_environment
from locpick.glance.coordination import Coordination, coordination_for
from locpick.glance.images import fetch_glance_image, glance_image, load_metadata
from locpick.glance.locations import GlanceLocations
from locpick.glance.vouch import MIN_KEY, FleetTrust
from locpick.models import Image
from locpick.net.policy import NetPolicy
from locpick.redact import SCRUB, install_log_redaction, register_env_secrets
from locpick.transports import Transports
from locpick.transports.base import Context

log = logging.getLogger(__name__)

Metadata = str | os.PathLike[str] | Mapping[str, Any]


class Session:
    """Pooled connections, transports, Keystone credentials and history; thread-safe."""

    def __init__(
        self,
        config: Config,
        env: Environment,
        *,
        glance_url: str | None,
        token: str | None,
        insecure: bool,
    ) -> None:
        install_log_redaction()
        register_env_secrets(env.vars)
        SCRUB.add(token)
        # [rbd]: what Ceph's own CEPH_ARGS / CEPH_CONF say fills what the config leaves unset
        config = attrs.evolve(config, rbd=config.rbd.with_environment(env.vars))
        self.config = config
        #: Whose peer copies this node trusts, and its key to sign its own (``[fleet]``).
        self.fleet = load_fleet(config.fleet)
        glance_url = glance_url if glance_url is not None else env.glance_url
        token = token if token is not None else env.token
        SCRUB.add(token)
        self.glance_url = glance_url
        #: Keystone (OS_AUTH_URL / OS_CLOUD) when the token or the endpoint must come from it.
        self.auth: OpenStackAuth | None = None
        if not (token and glance_url):
            self.auth = auth_from_environment(
                env.vars, token=token, timeout=max(30.0, config.transfer.connect_timeout)
            )
        # Proxies, trust and forbidden networks, from config + environment. A bad CA file,
        # proxy URL or no_proxy is a config error now, before anything is fetched.
        self.net = NetPolicy.from_environment(
            config,
            env.vars,
            cloud_cacert=self.auth.cacert if self.auth is not None else None,
            insecure=insecure or (self.auth is not None and self.auth.insecure),
        )
        if not self.net.trust.verify:
            self.config = attrs.evolve(config, tls=attrs.evolve(config.tls, verify=False))
            log.warning(
                "TLS certificate verification is OFF (--insecure / OS_INSECURE / [tls] verify = "
                "false): any host on the path can impersonate image locations and Glance"
            )
        if self.auth is not None:
            self.auth.use_policy(self.net)
        self.ctx = Context(
            self.config, glance_url=glance_url, token=token, net=self.net, env=env.vars
        )
        self.transports = Transports(self.ctx)
        self.lock = threading.Lock()
        #: Per-host outcomes persisted across runs (``history_file``; "" disables).
        self.history = History.from_config(self.config.history_file)
        #: The per-image Glance write lock (``[fleet] coordination``; none: appends only).
        self.coordination: Coordination = coordination_for(
            self.config.fleet.coordination, timeout=self.config.fleet.lock_timeout
        )
        if self.config.fleet.coordination:
            SCRUB.add(urllib.parse.urlsplit(self.config.fleet.coordination).password)

    def close(self) -> None:
        self.coordination.close()
        self.transports.close()
        self.ctx.close()

    def image(self, image_id: str, *, metadata: Metadata | None = None) -> Image:
        """The validated image record, from ``metadata`` if given, else from Glance."""
        limit = self.config.security.max_locations
        if metadata is not None:
            image = load_metadata(metadata, image_id, max_locations=limit)
            if image.status != "active":
                raise InputError(f"image {image_id} is {image.status!r}, not 'active'")
            return image
        glance_url, token = self.glance()
        try:
            return fetch_glance_image(
                self.ctx.http,
                glance_url,
                image_id,
                token=token,
                max_locations=limit,
                prefer_stores=self.config.glance.prefer_stores,
            )
        except ImageNotFound as exc:
            if self.auth is None:
                raise
            raise ImageNotFound(f"{exc}, as {self.auth.who}") from exc

    def image_answered(self, image_id: str, record: Mapping[str, Any]) -> Image:
        """The image from a record Glance answered to a write (the PATCH's answer): the same
        as :meth:`image` would read now, without the GET."""
        glance_url, _ = self.glance()
        return glance_image(
            record,
            glance_url,
            image_id,
            max_locations=self.config.security.max_locations,
            prefer_stores=self.config.glance.prefer_stores,
        )

    def glance(self) -> tuple[str, str | None]:
        """Glance endpoint and token; from Keystone (catalog, renewed token) when configured."""
        if self.auth is not None:
            token = self.auth.token()
            endpoint = self.glance_url or self.auth.image_endpoint()
            with self.lock:
                self.glance_url = self.ctx.glance_url = endpoint
                self.ctx.token = token
        if not self.glance_url:
            raise InputError(
                "no image source: give --metadata FILE or --glance-url URL (or set OS_IMAGE_URL,"
                " or OS_AUTH_URL/OS_CLOUD to find it in the service catalog)"
            )
        return self.glance_url, self.ctx.token

    def glance_locations(self, *, designated: bool = False) -> GlanceLocations:
        """The Glance locations API of this endpoint (token renewed if Keystone), writing
        under the fleet's per-image lock; ``designated``: the operator's reaping process."""
        endpoint, token = self.glance()
        return GlanceLocations(
            self.ctx.http,
            endpoint,
            token,
            coordination=self.coordination,
            designated=designated,
            max_copies=self.config.fleet.max_copies,
            max_copies_per_zone=self.config.fleet.max_copies_per_zone,
            zone=self.config.topology.zone,
        )

    def node_cache(
        self, cache_dir: str | os.PathLike[str] | None = None, *, required: bool = True
    ) -> NodeCache | None:
        """The node cache at ``cache_dir``, else ``[cache] dir``; None (or an error) if neither."""
        directory = cache_dir if cache_dir is not None else self.config.cache.dir
        if not directory:
            if required:
                raise ConfigError("no node cache: give --cache-dir DIR or set [cache] dir")
            return None
        return NodeCache(directory, self.config.cache.max_bytes)


def load_fleet(cfg: FleetConfig) -> FleetTrust:
    """The fleet trust of ``[fleet]``: the key read from ``key_file`` (a file others cannot
    read, at least ``MIN_KEY`` bytes, surrounding whitespace stripped) and the peer list."""
    if cfg.key_file is None:
        return FleetTrust(peers=cfg.peers)
    path = os.path.expanduser(cfg.key_file)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = fh.read(4096).strip()
    except OSError as exc:
        raise ConfigError(
            f"config [fleet] key_file {path}: cannot read ({exc.strerror or exc})"
        ) from exc
    if st.st_mode & 0o077:
        raise ConfigError(
            f"config [fleet] key_file {path}: readable by others (mode "
            f"{st.st_mode & 0o777:03o}); chmod 600 it"
        )
    if len(key) < MIN_KEY:
        raise ConfigError(
            f"config [fleet] key_file {path}: key shorter than {MIN_KEY} bytes; "
            "write a random key (e.g. `openssl rand -hex 32`)"
        )
    SCRUB.add(key.decode("utf-8", "replace"))
    return FleetTrust(key=key, peers=cfg.peers)
