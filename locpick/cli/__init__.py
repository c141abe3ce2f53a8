"""The ``locpick`` command: parse (``args``), call the public API, print (``format``, ``logfmt``),
exit with the contract's code; the ``serve``/``cache`` commands (``cache``) and the demo.

Layer: the top; imported by nothing but ``locpick.__main__``.
"""
