"""Private support for ``locpick demo``: the fault-injecting loopback origin it serves from.

Not public API. It ships in the package only because the demo needs it at run time; the tests
and benchmarks import the same server from here.
"""

#: The address every demo and test server binds unless told otherwise.
HOST = "127.0.0.1"
