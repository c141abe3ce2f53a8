"""How the best copy is chosen: probes measure (``probe``, no scoring), :mod:`locpick.choose.score`
decides the order with its reasons (pure: the one place the order is decided), ``history`` learns
per host, and ``storm``/``peer`` choose among peers' copies still filling in a boot storm.

The order is decided in one function, :func:`locpick.choose.score.rank` (live copies, then
silent ones, then unmeasured ones, Glance's ``/file`` last; topology levels nested), and
nothing downstream re-sorts a ranking: the download reads it in rank order (a boot storm's
``storm.arrange`` only moves peers' filling copies around it, see there).
:class:`locpick.choose.probe.ProbeRun` measures (happy eyeballs) and decides nothing;
:mod:`locpick.jobs.ranking` runs all of it for one image.

Layer: may import ``transports``, ``glance``, ``net``, ``sink``, ``config`` and the values; never
the engine, the cache or a job.
"""
