"""The verified atomic destination: a private temp or resumable part file beside DEST, written by
a thread and hashed by another as bytes arrive, size and hash checked, renamed into place; the
per-DEST lock; which hash proves an image. Never a partial or corrupt file at DEST.

Layer: imports only ``config`` and the values. A reader of what it writes (the node cache's
filling copy) plugs in through :class:`locpick.sink.pipe.Mirror`.
"""
