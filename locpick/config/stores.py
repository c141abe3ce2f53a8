"""The sections of the stores images live in: ``[s3]``, ``[glance]`` and the ``[swift.refs.REF]``
tables of Glance's swift store references."""

from __future__ import annotations

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
