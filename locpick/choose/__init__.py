"""How the best copy is chosen: probes measure (``probe``, no scoring), :mod:`locpick.choose.score`
decides the order with its reasons (pure: the one place the order is decided), ``history`` learns
per host, and ``storm``/``peer`` choose among peers' copies still filling in a boot storm.
:mod:`locpick.jobs.ranking` runs all of it for one image.

Layer: may import ``transports``, ``glance``, ``net``, ``sink``, ``config`` and the values; never
the engine, the cache or a job.
"""
