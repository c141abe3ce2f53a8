"""How the best copy is chosen: probes (measurement, no scoring), the pure score with its reasons,
learned per-host history, and the boot-storm choice among peers' filling copies.

:mod:`locpick.choose.ranking` is the one place that judges, probes and orders an image's
locations; the order itself is decided in one function, :func:`locpick.choose.score.rank`
(live copies, then silent ones, then unmeasured ones, Glance's ``/file`` last; topology levels
nested), and nothing downstream re-sorts a ranking: the download reads it in rank order (a
boot storm's ``storm.arrange`` only moves peers' filling copies around it, see there).
:class:`locpick.choose.probe.ProbeRun` measures (happy eyeballs) and decides nothing.
May import: ``models``, ``reasons``, ``config``, ``net``, ``transports``,
``glance.lease``.
Nothing here writes bytes to a destination.
"""
