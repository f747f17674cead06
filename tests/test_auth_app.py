"""MLflow's basic-auth app on the one-URI server: users and permissions in the same PostgreSQL database.

The setup docs/server.md describes ("Users and permissions"): ``mlflow server --app-name
basic-auth --backend-store-uri pgmodels://…`` with an ``auth_config`` whose ``database_uri`` is
the same database in SQLAlchemy's ``postgresql+psycopg://`` form, and
``MLFLOW_FLASK_SERVER_SECRET_KEY`` set. A user without EDIT on a registered model cannot change
it; with EDIT they can; a model registered through the server loads through it.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from tests import sample
from tests.mlflow_server import mlflow_server, run_client

ADMIN = ("admin", "admin-pw-0123456789")
ALICE = ("alice", "alice-pw-0123456789")
BOB = ("bob", "bob-pw-0123456789")

AUTH_CONFIG = """\
[mlflow]
default_permission = READ
database_uri = {database_uri}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""

REGISTER = """
import mlflow
from tests import sample

mlflow.set_experiment("guarded")
with mlflow.start_run():
    mlflow.sklearn.log_model(sample.regressor(3.0), name="model", registered_model_name="guarded",
                             pip_requirements=["scikit-learn"])
"""

LOAD = """
import json
import mlflow
from tests import sample

print(json.dumps(list(mlflow.pyfunc.load_model("models:/guarded/1").predict(sample.X[:2]))))
"""


def _call(server_url: str, user: tuple[str, str], path: str, body: dict) -> int:
    """POST ``body`` to the server as ``user``; the HTTP status."""
    token = base64.b64encode(":".join(user).encode()).decode()
    request = urllib.request.Request(f"{server_url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _as(user: tuple[str, str]) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}


@pytest.mark.slow  # a server and three client processes
def test_basic_auth_keeps_its_users_in_the_same_database_and_guards_the_registry(db, pg, tmp_path):
    config = tmp_path / "auth_config.ini"
    config.write_text(AUTH_CONFIG.format(database_uri=pg.socket_uri(db.name, scheme="postgresql+psycopg")))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-long-random-secret-for-sessions"}
    set_tag = "/api/2.0/mlflow/registered-models/set-tag"
    with mlflow_server(tmp_path / "server", db.uri, env=env, args=("--app-name", "basic-auth")) as server:
        for user in (ALICE, BOB):
            assert _call(server.url, ADMIN, "/api/2.0/mlflow/users/create",
                         {"username": user[0], "password": user[1]}) == 200
        run_client(server.url, tmp_path, REGISTER, env=_as(ALICE))  # alice registers: she may manage it

        tag = {"name": "guarded", "key": "reviewed", "value": "yes"}
        assert _call(server.url, BOB, set_tag, tag) == 403  # bob may read (the default), not edit
        assert _call(server.url, ("bob", "wrong-password"), set_tag, tag) == 401
        assert _call(server.url, ALICE, "/api/3.0/mlflow/users/permissions/grant",
                     {"username": "bob", "resource_type": "registered_model", "resource_id": "guarded",
                      "permission": "EDIT"}) == 200
        assert _call(server.url, BOB, set_tag, tag) == 200

        predictions = json.loads(run_client(server.url, tmp_path, LOAD, env=_as(BOB)).splitlines()[-1])
        assert server.failures() == [], server.log()[-5000:]

    assert predictions == pytest.approx(list(sample.regressor(3.0).predict(sample.X[:2])))
    assert db.sql("SELECT username FROM users ORDER BY username") == [("admin",), ("alice",), ("bob",)]
    assert db.sql("SELECT version FROM models WHERE name = 'guarded'") == [(1,)]
    assert db.sql("SELECT value FROM pgm_registered_model_tags WHERE name = 'guarded' AND key = 'reviewed'") \
        == [("yes",)]
