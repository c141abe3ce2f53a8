"""The node cache: verified images kept by id (LRU, crash-safe: ``store``, ``view``, ``files``,
``copy``), capability URLs (``capability``), the operator journal (``journal``), and copies still
being filled (``cache.fill``).

Layer: may import ``fetch``, ``choose``, ``transports``, ``glance``, ``sink``, ``config``,
``report`` and the values; never a job, ``serve`` or the CLI.
"""
