"""The short compat pass: what every team does with the store, on whatever MLflow is installed.

tests/compat_matrix.py runs this file (with MLflow's own registry tests, ../shared/peer-suite) on
every MLflow minor from the floor to the newest; .ci/run on the floor.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests import sample
from tests.mlflow_server import mlflow_server, run_client

pytestmark = pytest.mark.compat


def test_log_register_load_alias_stage(db):
    mlflow.set_tracking_uri(db.uri)
    first = sample.log(sample.regressor(2.0), "churn")
    second = sample.log(sample.regressor(3.0), "churn")
    assert (first.registered_model_version, second.registered_model_version) == (1, 2)

    latest = mlflow.pyfunc.load_model("models:/churn/latest")
    assert latest.predict(sample.X[:1])[0] == pytest.approx(sample.X[0, 0] * 3.0)

    client = MlflowClient()
    client.set_registered_model_alias("churn", "champion", 1)
    champion = mlflow.pyfunc.load_model("models:/churn@champion")
    assert champion.predict(sample.X[:1])[0] == pytest.approx(sample.X[0, 0] * 2.0)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    client.delete_registered_model_alias("churn", "champion")
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("churn", "champion")

    client.transition_model_version_stage("churn", 2, "Archived")
    assert client.get_model_version("churn", 2).current_stage == "Archived"
    # latest is the highest active version: archiving 2 makes it 1 again
    again = mlflow.pyfunc.load_model("models:/churn/latest")
    assert np.allclose(again.predict(sample.X[:2]), sample.X[:2, 0] * 2.0)


def test_mlflow_server_round_trip(db, tmp_path):
    with mlflow_server(tmp_path / "server", db.uri) as server:
        out = run_client(server.url, tmp_path, (
            "import mlflow, sys\n"
            "from tests import sample\n"
            "info = sample.log(sample.regressor(5.0), 'remote')\n"
            "mlflow.MlflowClient().set_registered_model_alias('remote', 'prod', info.registered_model_version)\n"
            "model = mlflow.pyfunc.load_model('models:/remote@prod')\n"
            "print(info.registered_model_version, round(float(model.predict(sample.X[:1])[0] / sample.X[0, 0]), 6))\n"))
        assert out.split()[-2:] == ["1", "5.0"]
        assert server.failures() == []
    assert db.sql("SELECT name, version FROM models") == [("remote", 1)]
