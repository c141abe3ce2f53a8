"""How the best copy is chosen: probes (measurement, no scoring), the pure score with its reasons,
learned per-host history, and the boot-storm choice among peers' filling copies.

:mod:`locpick.choose.ranking` is the one place that judges, probes and orders an image's
locations. May import: ``models``, ``reasons``, ``config``, ``net``, ``transports``,
``glance.lease``.
Nothing here writes bytes to a destination.
"""
