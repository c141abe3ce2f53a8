"""Glance, the shared registry: image records and their locations (``images``), Keystone
credentials (``auth``), the location writes of this node's own copies (``locations``, serialised
by ``coordination``), the lease marks they carry (``lease``) and which peers' copies the fleet
vouches for (``vouch``).

Layer: above ``net``, ``sink``, ``config`` and the values (``models``, ``errors``, ``redact``...),
which it may import; it knows nothing of transports, the choice, the engine or the cache.
"""
