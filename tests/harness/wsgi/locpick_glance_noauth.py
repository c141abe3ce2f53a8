"""Paste filter for the no-auth Glance: every request is an admin of project locpick-project.

Loaded by Glance's gunicorn (from the Glance venv), not by the tests. Glance's own
``unauthenticated-context`` filter leaves ``project_id`` empty and no roles, so copy-image
(policy ``role:admin``) answers 403 and every task-based call fails on the NOT NULL
``tasks.owner`` column; this context has both a project and the admin role.
"""

import os

import glance.context
from glance.api.middleware.context import BaseContextMiddleware


class NoauthAdminContext(BaseContextMiddleware):
    def process_request(self, req):
        req.context = glance.context.RequestContext(
            user_id=os.environ.get("GLANCE_NOAUTH_USER_ID", "locpick-admin"),
            project_id=os.environ.get("GLANCE_NOAUTH_PROJECT_ID", "locpick-project"),
            roles=["admin", "member", "reader"],
            is_admin=True,
        )
