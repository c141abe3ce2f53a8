"""The project's own test harness: real Glance 33, Keystone 30 and Swift 2.38 on loopback.

Each service is installed from PyPI into a venv cached under ``$LOCPICK_TEST_CACHE``
(default ``~/.cache/locpick-test``) on first use, configured in a per-instance WORKDIR and
run as its own process group so that stopping it touches nothing else. Stdlib only on the
test side; the services' own code runs in their venvs.
"""
