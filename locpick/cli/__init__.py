"""The ``locpick`` command: parse, call the public API, print, exit with the contract's code.

The top of the tree: imports anything, imported by nothing but ``__main__``.
"""
