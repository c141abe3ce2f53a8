"""How locpick connects: the address guard against SSRF (``addr``), proxies (``proxy``), the one
trust store (``trust``), combined in :mod:`locpick.net.policy`, which every connection goes
through.

Layer: imports only ``config`` and the values.
"""
