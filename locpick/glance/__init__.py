"""Glance, the shared registry: image records and their locations (read), Keystone credentials,
the location writes of this node's own copies, leases, which peers' copies the fleet vouches
for, and replica checks.

May import: ``locpick.models``, ``errors``, ``redact``, ``reasons``, ``config``, ``net``, ``sink``
(hashing),
``transports``. Nothing here knows of the cache, the fetch engine or the CLI.
"""
