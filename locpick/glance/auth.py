"""OpenStack credentials, obtained the way OpenStack's own clients obtain them.

* ``OS_AUTH_URL`` + ``OS_USERNAME``/``OS_PASSWORD``/``OS_PROJECT_NAME``/... (any keystoneauth1
  plugin, chosen by ``OS_AUTH_TYPE``, default ``password``): keystoneauth1's plugin loader reads
  the same ``OS_*`` names its argparse integration reads, so every variable openstackclient
  accepts for the plugin is accepted here.
* ``OS_CLOUD`` + clouds.yaml (``OS_CLIENT_CONFIG_FILE``, ``./clouds.yaml``,
  ``~/.config/openstack/clouds.yaml``, ``/etc/openstack/clouds.yaml``, plus secure.yaml and
  vendor profiles): openstacksdk's own config loader (``openstack.config``), imported only here
  and only then (about 0.2 s), so clouds.yaml means exactly what it means to ``openstack``.

Both give a keystoneauth1 ``Session``: it fetches, caches and renews the token, and finds the
image endpoint in the service catalog (``OS_REGION_NAME``, ``OS_INTERFACE``) when no
``--glance-url`` / ``OS_IMAGE_URL`` is given. Every token and password is registered with
:data:`locpick.redact.SCRUB`. Nothing here is hand-rolled Keystone protocol.

Failures become :class:`~locpick.errors.AuthError` (exit 2) with one line saying which
Keystone, which user, and what to check; a catalog without an image endpoint is an
:class:`~locpick.errors.InputError`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

from locpick.errors import AuthError, ConfigError, InputError
from locpick.net.policy import NetPolicy
from locpick.redact import SCRUB, redact_url

__all__ = ["OpenStackAuth", "auth_from_environment", "unversioned_endpoint"]

log = logging.getLogger(__name__)

_EXTRA = "install locpick[openstack]"
_VERSION_SUFFIX = re.compile(r"/v\d+(\.\d+)?$")


def unversioned_endpoint(url: str) -> str:
    """The Glance root of a catalog URL: ``http://h:9292/v2/`` -> ``http://h:9292``."""
    return _VERSION_SUFFIX.sub("", url.rstrip("/"))


class OpenStackAuth:
    """A keystoneauth1 session plus where the image service is; safe to share between threads."""

    def __init__(
        self,
        session: Any,
        *,
        where: str,
        who: str,
        region_name: str | None = None,
        interface: str | list[str] | None = "public",
        service_name: str | None = None,
        endpoint_override: str | None = None,
        auth_url: str = "",
        cacert: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.session = session
        #: Keystone's URL (routes the session) and the CA file clouds.yaml names, if any.
        self.auth_url = auth_url
        self.cacert = cacert
        #: clouds.yaml said ``verify: false`` / ``insecure: true``.
        self.insecure = insecure
        #: Display-safe description of the Keystone (auth URL or cloud name).
        self.where = where
        #: Display-safe description of the principal, e.g. ``user 'demo' in project 'demo'``.
        self.who = who
        self.region_name = region_name
        self.interface = interface
        self.service_name = service_name
        self._endpoint = endpoint_override
        self._lock = threading.Lock()

    def use_policy(self, net: NetPolicy) -> None:
        """Talk to Keystone with the client's one trust store and route."""
        self.session.verify = net.trust.requests_verify()
        cert = net.trust.requests_cert()
        if cert is not None:
            self.session.cert = cert
        net.apply_to_requests(self.session.session, self.auth_url)

    def token(self) -> str:
        """A valid token (keystoneauth1 caches it and re-authenticates before it expires)."""
        try:
            token = self.session.get_token()
        except Exception as exc:  # keystoneauth1 errors are converted in _convert
            raise _convert(exc, self) from exc
        if not token:
            raise AuthError(f"keystone {self.where}: no token obtained for {self.who}")
        SCRUB.add(token)
        return str(token)

    def image_endpoint(self) -> str:
        """The Glance root URL: the configured override, else the catalog's ``image`` entry."""
        with self._lock:
            if self._endpoint is None:
                self._endpoint = self._from_catalog()
            return self._endpoint

    def _from_catalog(self) -> str:
        try:
            url = self.session.get_endpoint(
                service_type="image",
                interface=self.interface,
                region_name=self.region_name,
                service_name=self.service_name,
            )
        except Exception as exc:  # keystoneauth1 errors are converted in _convert
            raise _convert(exc, self) from exc
        if not url:
            region = f"region {self.region_name!r}" if self.region_name else "any region"
            raise InputError(
                f"keystone {self.where}: the service catalog of {self.who} has no 'image' "
                f"endpoint (interface {self.interface!r}, {region}); set --glance-url or "
                "OS_IMAGE_URL"
            )
        root = unversioned_endpoint(str(url))
        log.info("image endpoint from the service catalog of %s: %s", self.where, root)
        return root


def _convert(exc: BaseException, auth: OpenStackAuth) -> Exception:
    """One place where keystoneauth1 errors become locpick errors with a useful sentence."""
    from keystoneauth1 import exceptions as ks

    where = f"keystone {auth.where}"
    detail = SCRUB(str(exc)) or type(exc).__name__
    if isinstance(exc, ks.Unauthorized):
        return AuthError(
            f"{where}: authentication refused for {auth.who} (HTTP 401); check the password "
            "and user/project names (OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, the domain "
            "variables, or the cloud's auth section in clouds.yaml)"
        )
    if isinstance(exc, ks.Forbidden):
        return AuthError(f"{where}: {auth.who} is not allowed to get a token (HTTP 403)")
    if isinstance(exc, ks.EndpointNotFound):
        return InputError(
            f"{where}: no 'image' endpoint in the service catalog for {auth.who} "
            f"({detail}); set --glance-url or OS_IMAGE_URL"
        )
    if isinstance(exc, ks.MissingRequiredOptions):
        names = ", ".join("OS_" + o.dest.upper() for o in exc.options)
        return AuthError(f"{where}: incomplete credentials, missing {names}")
    if isinstance(exc, ks.ConnectFailure | ks.ConnectionError | ks.DiscoveryFailure):
        return AuthError(f"{where}: cannot reach Keystone ({type(exc).__name__}: {detail})")
    if isinstance(exc, ks.ClientException):
        return AuthError(f"{where}: authentication failed for {auth.who} ({detail})")
    return AuthError(f"{where}: {type(exc).__name__}: {detail}")


def _interface(value: str | None) -> str:
    """``publicURL`` (old OS_ENDPOINT_TYPE spelling) -> ``public``."""
    value = (value or "public").strip()
    return value[:-3] if value.lower().endswith("url") else value


def auth_from_environment(
    env: Mapping[str, str],
    *,
    token: str | None = None,
    timeout: float = 30.0,
) -> OpenStackAuth | None:
    """An OpenStackAuth from ``OS_CLOUD`` or ``OS_AUTH_URL``; None when neither is set.

    ``token`` (``--token`` / ``OS_AUTH_TOKEN``) is used with keystoneauth1's ``token`` plugin,
    so that a bare token can still look up the image endpoint in the catalog. No network I/O
    happens here; the first :meth:`OpenStackAuth.token` call authenticates. TLS trust and
    routing come from the client's connection policy (:meth:`OpenStackAuth.use_policy`).
    """
    cloud = env.get("OS_CLOUD")
    if cloud:
        return _from_clouds_yaml(cloud, timeout=timeout)
    if env.get("OS_AUTH_URL"):
        return _from_os_env(env, token=token, timeout=timeout)
    return None


def _from_os_env(env: Mapping[str, str], *, token: str | None, timeout: float) -> OpenStackAuth:
    try:
        from keystoneauth1 import exceptions as ks
        from keystoneauth1 import loading
        from keystoneauth1 import session as ks_session
    except ImportError as exc:
        raise ConfigError(f"OS_AUTH_URL is set but keystoneauth1 is missing: {_EXTRA}") from exc

    auth_type = env.get("OS_AUTH_TYPE") or ("token" if token else "password")
    try:
        loader: Any = loading.get_plugin_loader(auth_type)
    except ks.NoMatchingPlugin as exc:
        raise ConfigError(f"OS_AUTH_TYPE {auth_type!r}: no such keystoneauth1 plugin") from exc
    options: dict[str, Any] = {}
    for opt in loader.get_options():
        for var in opt.argparse_envvars:
            if env.get(var):
                options[opt.dest] = env[var]
                break
    if token and "token" in {o.dest for o in loader.get_options()}:
        options.setdefault("token", token)
    SCRUB.add(*(str(v) for k, v in options.items() if _secret_option(k)))
    auth_url = str(options.get("auth_url", ""))
    where = redact_url(auth_url)
    who = _who(options)
    try:
        plugin = loader.load_from_options(**options)
    except ks.MissingRequiredOptions as exc:
        names = ", ".join("OS_" + o.dest.upper() for o in exc.options)
        raise AuthError(f"keystone {where}: incomplete credentials, missing {names}") from exc
    session = ks_session.Session(auth=plugin, timeout=timeout, app_name="locpick")
    return OpenStackAuth(
        session,
        where=where,
        who=who,
        region_name=env.get("OS_REGION_NAME") or None,
        interface=_interface(env.get("OS_INTERFACE") or env.get("OS_ENDPOINT_TYPE")),
        service_name=env.get("OS_IMAGE_SERVICE_NAME") or None,
        auth_url=auth_url,
    )


def _secret_option(name: str) -> bool:
    return any(s in name for s in ("password", "secret", "token", "passcode"))


def _who(auth: Mapping[str, Any]) -> str:
    user = auth.get("username") or auth.get("user_id") or auth.get("application_credential_id")
    project = auth.get("project_name") or auth.get("project_id")
    text = f"user {user!r}" if user else "the token holder"
    return text + (f" in project {project!r}" if project else "")


def _from_clouds_yaml(cloud: str, *, timeout: float) -> OpenStackAuth:
    try:
        from openstack import config as os_config
        from openstack import exceptions as os_exc
    except ImportError as exc:
        raise ConfigError(f"OS_CLOUD is set but openstacksdk is missing: {_EXTRA}") from exc
    try:
        loader: Any = os_config.OpenStackConfig()
    except (os_exc.ConfigException, OSError, ValueError) as exc:
        raise ConfigError(f"OS_CLOUD {cloud!r}: cannot read clouds.yaml ({exc})") from exc
    try:
        region = loader.get_one(cloud=cloud)
    except (os_exc.ConfigException, KeyError, ValueError) as exc:
        found = getattr(loader, "config_filename", None) or "no clouds.yaml found"
        raise ConfigError(f"OS_CLOUD {cloud!r}: {SCRUB(str(exc))} ({found})") from exc
    auth = dict(region.config.get("auth") or {})
    SCRUB.add(*(str(v) for k, v in auth.items() if _secret_option(k)))
    where = f"{redact_url(str(auth.get('auth_url', '')))} (cloud {cloud!r})"
    who = _who(auth)
    try:
        session = region.get_session()
    except Exception as exc:  # converted in _convert
        probe = OpenStackAuth(None, where=where, who=who)
        raise _convert(exc, probe) from exc
    if session.timeout is None:
        session.timeout = timeout
    cacert = region.config.get("cacert")
    interface = region.get_interface("image")
    return OpenStackAuth(
        session,
        where=where,
        who=who,
        region_name=region.get_region_name("image") or None,
        interface=_interface(interface) if isinstance(interface, str) else interface,
        service_name=region.get_service_name("image") or None,
        endpoint_override=_root_or_none(region.get_endpoint("image")),
        auth_url=str(auth.get("auth_url", "")),
        cacert=str(cacert) if cacert else None,
        insecure=region.config.get("verify") is False,
    )


def _root_or_none(url: str | None) -> str | None:
    return unversioned_endpoint(url) if url else None
