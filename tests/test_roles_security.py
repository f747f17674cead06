"""Rights: a refused write is refused whole — no half-done change, no number used up.

tests/test_roles.py covers the reader and writer roles through MLflow. Here: the seed's helper
API and the CLI as a reader, and roles with only part of the rights a write needs, where a
store that did its statements outside one transaction would leave half a change behind.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests import sample
from tests.test_roles import _state  # everything a write could change


@pytest.fixture
def registry(client, tmp_path):
    """'churn' versions 1 (Production) and 2, registered by the owner."""
    client.create_registered_model("churn")
    for slope in (1.0, 2.0):
        path = str(tmp_path / f"m{slope}")
        mlflow.sklearn.save_model(sample.regressor(slope), path, pip_requirements=["scikit-learn"],
                                  serialization_format="cloudpickle")
        client.create_model_version("churn", path, tags={"event": "promo", "model_type": "regression"})
    client.transition_model_version_stage("churn", "1", "Production")
    return path


def test_reader_loads_through_the_helper_api_but_cannot_change_anything(db, registry, caplog):
    from mlflow_pgmodels.helpers import (activate_model, deactivate_model, load_model_from_db,
                                         save_model_to_db)

    user, password = db.login_role("pgmodels_reader")
    uri = db.tcp_uri(user, password)
    before = _state(db)

    model, version = load_model_from_db("churn", "promo", "regression", uri=uri)
    assert version == 2 and model.predict(sample.X[:1])[0] == pytest.approx(2.0 * sample.X[0, 0])
    with caplog.at_level(logging.ERROR):
        assert save_model_to_db(sample.regressor(3.0), "churn", "promo", "regression", uri=uri) == (False, None)
        assert deactivate_model("churn", "promo", "regression", 2, uri=uri) is False
        assert activate_model("churn", "promo", "regression", 1, uri=uri) is True  # already active: no write
    assert _state(db) == before
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(refusals) == 2 and all("Permission denied" in m for m in refusals), refusals
    assert not any(password in m for m in refusals)


def _partial_role(db, grants: list[str]) -> str:
    """A login role that reads everything but may do only ``grants``; returns its URI."""
    user, password = db.login_role("pgmodels_reader")
    for grant in grants:
        db.sql(f"GRANT {grant} TO {user}")
    return db.tcp_uri(user, password)


PARTIAL = {
    # the version number is taken, then inserting the row is refused
    "register": (["UPDATE ON pgm_registered_models"],
                 lambda c, path: c.create_model_version("churn", path)),
    # the row is deleted, then touching the registered model is refused
    "delete a version": (["DELETE ON models"],
                         lambda c, path: c.delete_model_version("churn", "2")),
    # the version's timestamp is updated, then inserting the tag is refused
    "tag a version": (["UPDATE ON models"],
                      lambda c, path: c.set_model_version_tag("churn", "2", "reviewed", "yes")),
    # version 2 goes to Production and version 1 is archived, then touching the model is refused
    "transition": (["UPDATE ON models", "UPDATE (next_version) ON pgm_registered_models"],
                   lambda c, path: c.transition_model_version_stage("churn", "2", "Production",
                                                                    archive_existing_versions=True)),
}


@pytest.mark.parametrize("write", list(PARTIAL))
def test_write_refused_half_way_leaves_nothing_behind(db, registry, write):
    grants, do = PARTIAL[write]
    client = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri=_partial_role(db, grants))
    before = _state(db)

    with pytest.raises(MlflowException) as e:
        do(client, registry)

    assert e.value.error_code == "PERMISSION_DENIED", e.value.message
    assert "Permission denied" in e.value.message and "sql/roles.sql" in e.value.message
    assert _state(db) == before
    # and the owner's next registration gets the next number
    mlflow.set_tracking_uri(db.uri)
    assert int(MlflowClient().create_model_version("churn", registry).version) == 3


def test_cli_as_reader_explains_the_missing_right(db):
    user, password = db.login_role("pgmodels_reader")
    db.sql("UPDATE pgm_schema_info SET schema_version = schema_version - 1")  # work to do (else a no-op)
    done = subprocess.run(
        [sys.executable, "-m", "mlflow_pgmodels.cli", "db", "upgrade", "--registry-only",
         "--uri", db.tcp_uri(user, password)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Permission denied" in done.stderr and "Traceback" not in done.stderr
    assert password not in done.stdout + done.stderr
