"""Keystone's WSGI app for gunicorn, imported with an empty argv.

``keystone.wsgi.api`` configures oslo.config at import time without ``args=``, so it
would parse gunicorn's own command line and every worker would exit with "unrecognized
arguments". The config comes from ``OS_KEYSTONE_CONFIG_DIR``.
"""

import sys

_argv = sys.argv
sys.argv = _argv[:1] or ["keystone"]
try:
    from keystone.wsgi.api import application  # noqa: F401
finally:
    sys.argv = _argv
