"""``locpick serve``: the node cache read-only over HTTP (aiohttp; ``server``, ``guard``, ``send``),
copies still filling (``fill``), lease renewal (``renew``), ``/metrics`` and ``/status`` (``ops``,
``metrics``, ``families``, ``status``).

Layer: below the CLI only; may import ``client`` and everything under it.
"""
