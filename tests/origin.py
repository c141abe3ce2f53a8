"""The fault-injecting test origin lives in the package (``locpick.testing``) so that the demo
and the benchmarks use the same server as the tests; this module keeps test imports short."""

from locpick.testing import *  # noqa: F403
from locpick.testing import __all__  # noqa: F401
