"""The ``[tls]`` and ``[network]`` sections: how every connection is verified and routed."""

from __future__ import annotations

import attrs


@attrs.frozen
class TLSConfig:
    """One trust store for every connection (Glance, Keystone, probes, bulk GETs, Swift, S3)."""

    #: CA bundle (PEM) to verify servers against; wins over OS_CACERT, clouds.yaml ``cacert``,
    #: SSL_CERT_FILE/SSL_CERT_DIR and the system store, in that order.
    ca_file: str | None = None
    #: False = ``--insecure`` (also OS_INSECURE): no verification, warned about on every use.
    verify: bool = True
    #: Client certificate (PEM) for servers that require mutual TLS; wins over OS_CERT.
    cert_file: str | None = None
    #: Its private key when not inside ``cert_file``; wins over OS_KEY.
    key_file: str | None = None


@attrs.frozen
class NetworkConfig:
    """How connections are routed (the "Connection policy" table of the Configuration page)."""

    #: Proxy for every http(s) connection (CONNECT for https), overriding http_proxy,
    #: https_proxy and all_proxy; "" = no proxy whatever the environment says.
    proxy: str | None = None
    #: Hosts reached directly (curl's no_proxy syntax: ``*``, names, ``.domain`` suffixes,
    #: IPs, CIDR networks), overriding the no_proxy environment variable.
    no_proxy: str | None = None
