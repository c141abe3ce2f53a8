"""The node cache: verified images kept by id (LRU, crash-safe), its trust checks, capability
URLs, the operator journal, and (``cache.fill``) copies still being filled.

May import: ``models``, ``config``, ``sink``, ``glance`` (location writes), ``fetch`` values.
"""
