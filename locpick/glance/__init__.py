"""Glance, the shared registry: image records and their locations (``images``), Keystone
credentials (``auth``), the location writes of this node's own copies (``locations``) and the
lease marks they carry (``lease``).

Layer: above ``net``, ``sink``, ``config`` and the values (``models``, ``errors``, ``redact``...),
which it may import; it knows nothing of transports, the choice, the engine or the cache.
"""
