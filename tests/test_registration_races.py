"""Registrations next to other writers of the same model: short locks, clear errors.

A version takes its number at the end of its upload, so a large upload holds up nobody: the
model's aliases, tags, stages and other registrations go on meanwhile. A registration that loses
a race with a delete or a rename of its model is told so (RESOURCE_DOES_NOT_EXIST), never a 500.
"""

from __future__ import annotations

import os
import threading

import mlflow
import numpy as np
import psycopg
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests import procs, sample

BIG_BYTES = 300 * 1024 * 1024


@pytest.mark.slow
def test_the_model_stays_writable_while_a_large_version_uploads(client, db, tmp_path):
    big = str(tmp_path / "big")
    mlflow.sklearn.save_model(sample.regressor(7.0), big, pip_requirements=["scikit-learn"])
    with open(os.path.join(big, "weights.bin"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(BIG_BYTES))
    client.create_registered_model("churn")
    client.create_model_version("churn", sample.saved(tmp_path / "v1", sample.regressor(1.0)))

    upload = procs.context().Process(target=procs.register_dir, args=(db.uri, str(tmp_path / "child"), "churn", big))
    upload.start()
    procs.wait_for("the upload's COPY to be under way", lambda: db.sql(
        "SELECT 1 FROM pg_stat_progress_copy p JOIN pg_stat_activity a USING (pid)"
        " WHERE p.datname = current_database() AND a.query LIKE 'COPY%%' AND p.bytes_processed > 10000000"))

    # while the bytes still stream in: every change of the same model goes through
    client.set_registered_model_alias("churn", "champion", "1")
    client.set_registered_model_tag("churn", "team", "risk")
    client.update_registered_model("churn", description="who leaves")
    client.transition_model_version_stage("churn", "1", "Production")
    small = client.create_model_version("churn", sample.saved(tmp_path / "v2", sample.regressor(2.0)))
    still_uploading = db.sql("SELECT count(*) FROM pg_stat_progress_copy WHERE datname = current_database()")
    upload.join()

    assert upload.exitcode == 0
    assert still_uploading == [(1,)], "the writes of the same model waited for the upload to end"
    # the small version was registered during the upload and took the next number; the
    # upload took its number when its bytes were in, after it
    assert int(small.version) == 2
    assert sorted(int(mv.version) for mv in client.search_model_versions("name = 'churn'")) == [1, 2, 3]
    assert client.get_registered_model("churn").aliases == {"champion": 1}
    assert db.sql("SELECT octet_length(model_binary) > %s FROM models WHERE name = 'churn' AND version = 3",
                  (BIG_BYTES,)) == [(True,)]
    assert db.sql("SELECT next_version FROM pgm_registered_models WHERE name = 'churn'") == [(4,)]


@pytest.mark.parametrize("change", ["DELETE FROM pgm_registered_models WHERE name = 'churn'",
                                    "UPDATE pgm_registered_models SET name = 'attrition' WHERE name = 'churn'"])
def test_a_registration_that_races_a_delete_or_rename_is_told_the_model_is_gone(client, db, tmp_path, change):
    client.create_registered_model("churn")
    source = sample.saved(tmp_path / "m", sample.regressor(1.0))
    outcome: dict = {}

    def register():
        try:
            outcome["version"] = MlflowClient(tracking_uri=db.uri).create_model_version("churn", source)
        except Exception as e:  # recorded; asserted on below
            outcome["error"] = e

    with psycopg.connect(db.server.socket_uri(db.name, scheme="postgresql")) as other:
        other.execute(change)  # not committed yet: the registration starts while it is in flight
        thread = threading.Thread(target=register)
        thread.start()
        procs.wait_for("the registration to wait for the other transaction", lambda: db.sql(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"))
        other.commit()
    thread.join()

    assert isinstance(outcome.get("error"), MlflowException), outcome
    assert outcome["error"].error_code == "RESOURCE_DOES_NOT_EXIST"
    assert "churn" in outcome["error"].message
    assert db.sql("SELECT count(*) FROM models") == [(0,)]
