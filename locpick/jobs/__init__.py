"""What one :class:`locpick.client.Client` call does, one module per job: the shared session
(pool, transports, credentials), a download as named steps, the cache step of a download,
the cache ↔ Glance sync, and replica upkeep (verify, prune, reap).

May import everything below it (``choose``, ``fetch``, ``cache``, ``glance``, ``sink``); only
``locpick.client`` imports ``jobs``.
"""
