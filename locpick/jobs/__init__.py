"""What one :class:`locpick.client.Client` call does, one module per job: the shared ``session``
(pool, transports, credentials, history), ``ranking`` (judge, probe with a cache, score),
``download`` as named steps with its cache step (``cachestep``), the node cache and Glance kept in
agreement (``cachesync``), replica checks (``replicas``) and upkeep (``reaper``).

Layer: below ``client``; may import ``cache``, ``fetch``, ``choose``, ``transports``, ``glance``
and everything under them.
"""
