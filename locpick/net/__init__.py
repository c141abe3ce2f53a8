"""How locpick connects: the address guard (SSRF), proxies and the one trust store.

May import: ``locpick.config``, ``errors``, ``redact``. Everything that opens a connection goes
through :mod:`locpick.net.policy`.
"""
