"""Moving bytes from ranked locations into a sink: the transfer entry, its pure policy (retry,
backoff, switch, deadlines) and the swarm (several copies at once, in pieces).

May import: ``models``, ``config``, ``choose`` (values only), ``transports``, ``sink``. Knows
nothing
of the node cache, Glance writes or the CLI.
"""
