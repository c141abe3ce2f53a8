"""Moving bytes from ranked locations into a sink: the entry (``transfer``), its pure policy
(``policy``: retry, backoff, switch, deadlines) and the swarm (``swarm``: several copies at once,
in pieces, verified and repaired).

Layer: may import ``choose`` (values and the topology class), ``transports``, ``sink``, ``config``
and the values. It knows nothing of the node cache: a filling copy is a ``sink.pipe.Mirror``.
"""
