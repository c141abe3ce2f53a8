"""Stream-through copies: a download into the node cache is servable, and registered in Glance,
while it is still being written. The fill record (``state``, ``record``, ``writer``) is the
contract between the downloader that writes it and ``serve`` that reads it; ``tee`` mirrors the
sink's writes into the filling file; ``register`` is its Glance side.
"""
