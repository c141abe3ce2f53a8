"""The fault-injecting test origin lives in the package (``locpick._demo.origin``, private) so
that the demo and the benchmarks use the same server as the tests; this keeps test imports short."""

from locpick._demo.origin import *  # noqa: F403
from locpick._demo.origin import __all__  # noqa: F401
