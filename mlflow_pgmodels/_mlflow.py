"""The one seam to MLflow's internals: every private MLflow name the package uses, every MLflow
function it replaces at run time, and every assumption about MLflow's tables and server.

(Created on branch ``security`` with only what it needs; the ``compat`` branch holds the full module.)
"""

from __future__ import annotations

# Where MLflow's authentication app (``mlflow server --app-name basic-auth``) puts the user it has
# authenticated, in its before-request hook; MLflow's own handlers read it from there.
_AUTHENTICATED_USER = "mlflow_authenticated_user"


def authenticated_server_user() -> str | None:
    """The user MLflow's authentication app authenticated for the current request of ``mlflow server``.

    None outside a request, and when the server runs without an authentication app: then an
    ``Authorization`` header is whatever the client sent and proves nothing.
    """
    try:
        from flask import g, has_request_context
    except ImportError:
        return None
    if not has_request_context():
        return None
    return getattr(g, _AUTHENTICATED_USER, None)
