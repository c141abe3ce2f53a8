"""The sections of the stores images live in: ``[s3]``, ``[glance]``, ``[rbd]`` and the
``[swift.refs.REF]`` tables of Glance's swift store references."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class S3Config:
    """s3:// locations. Credentials come from the standard AWS environment (env, profile, ...)."""

    #: Endpoint of an S3-compatible store; None = $AWS_ENDPOINT_URL, else AWS itself.
    endpoint_url: str | None = None
    #: Region to sign for; None = from the AWS environment.
    region: str | None = None
    #: Named AWS profile; None = $AWS_PROFILE / default.
    profile: str | None = None
    #: Honour a location's own metadata ``endpoint_url`` (it then wins over the above). Off by
    #: default: image locations may be tenant-controlled (OSSN-0065), and signed requests
    #: should not be steered to a host the operator did not choose.
    location_endpoint: bool = False


@attrs.frozen
class GlanceConfig:
    prefer_stores: tuple[str, ...] = ()


@attrs.frozen
class SwiftRefConfig:
    """Credentials of one ``swift+config://REF/...`` reference (Glance's glance-swift.conf)."""

    name: str
    #: The auth endpoint: Keystone v3 (``.../v3``) or Swift v1 (``.../auth/v1.0``).
    auth_url: str
    #: ``account:user`` (the project and user, as in Glance's swift store config).
    user: str
    key: str = attrs.field(repr=False)


@attrs.frozen
class SwiftConfig:
    """``[swift.refs.REF]`` tables: what locpick knows of Glance's swift store references."""

    refs: tuple[SwiftRefConfig, ...] = ()

    def ref(self, name: str) -> SwiftRefConfig | None:
        return next((r for r in self.refs if r.name == name), None)


#: ``CEPH_ARGS`` options that name the client, its key and the cluster's config (Ceph's spelling).
_CEPH_ARG_FIELDS = {
    "--id": "user",
    "--user": "user",
    "-n": "name",
    "--name": "name",
    "-k": "keyring",
    "--keyring": "keyring",
    "-c": "conf",
    "--conf": "conf",
}


@attrs.frozen
class RbdConfig:
    """``rbd://`` locations (Ceph RBD, Glance's rbd store): which cluster config and client key
    this node reads them with. Unset values follow Ceph's own conventions (``CEPH_ARGS``,
    ``CEPH_CONF``, ``/etc/ceph``), taken from the environment snapshot at the edge."""

    #: ceph.conf of the cluster; None = ``-c`` in ``$CEPH_ARGS``, ``$CEPH_CONF``,
    #: ``/etc/ceph/ceph.conf``.
    conf: str | None = None
    #: Client id without ``client.`` (Nova's ``rbd_user``); None = ``--id``/``--name`` in
    #: ``$CEPH_ARGS``, else Ceph's default ``admin``.
    user: str | None = None
    #: Keyring holding that client's key; None = ``-k`` in ``$CEPH_ARGS``, the ceph.conf
    #: ``keyring`` setting, else Ceph's default search (``/etc/ceph/ceph.client.ID.keyring``...).
    keyring: str | None = None
    #: Seconds to reach the monitors and authenticate.
    connect_timeout: float = 5.0
    #: Seconds one read may wait on an OSD (``rados_osd_op_timeout``) before the copy is
    #: abandoned for the next one.
    read_timeout: float = 10.0
    #: ``auto``: librbd (the ``rados``/``rbd`` Python bindings, ranged reads) where they import,
    #: else the ``rbd export`` command (one sequential stream); ``librbd`` or ``cli`` forces one.
    engine: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "librbd", "cli"))
    )

    def with_environment(self, env: Mapping[str, str]) -> RbdConfig:
        """Fill the unset values from ``CEPH_ARGS`` and ``CEPH_CONF`` of ``env`` (the edge's
        snapshot): what the ``rbd`` command itself would use on this node."""
        found: dict[str, str] = {}
        words = shlex.split(env.get("CEPH_ARGS") or "")
        for i, word in enumerate(words):
            opt, eq, value = word.partition("=")
            field = _CEPH_ARG_FIELDS.get(opt)
            if field is None:
                continue
            if not eq:
                if i + 1 >= len(words):
                    continue
                value = words[i + 1]
            found.setdefault(field, value)
        name = found.pop("name", "")
        if name.startswith("client."):
            found.setdefault("user", name.removeprefix("client."))
        if env.get("CEPH_CONF"):
            found.setdefault("conf", env["CEPH_CONF"])
        changes: dict[str, Any] = {k: v for k, v in found.items() if getattr(self, k) is None}
        return attrs.evolve(self, **changes) if changes else self
