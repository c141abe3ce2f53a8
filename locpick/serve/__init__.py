"""``locpick serve``: the node cache read-only over HTTP (aiohttp), copies still filling,
lease renewal, ``/metrics`` and ``/status``.

May import: ``cache``, ``glance``, ``config``, ``models``, ``report``. Nothing imports ``serve``
but the CLI.
"""
