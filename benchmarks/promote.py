"""Promote a large version between two PostgreSQL servers against a plain copy of its row (issue 19).

    python benchmarks/promote.py --mib 256            # a 'mlflow-zip' version
    python benchmarks/promote.py --mib 256 --files    # the same bytes as a 'files' version

Starts two embedded PostgreSQL servers (dev and prod) in a temporary directory, registers a model
with a ``--mib`` MiB incompressible file on dev, then times, each in a new process:
``mlflow-pgmodels promote`` (streamed, verified, client peak memory reported) and
``psql -c "COPY (SELECT * FROM models WHERE ...) TO STDOUT (FORMAT binary)" | psql -c "COPY ... FROM STDIN"``
into a table like ``models`` on prod (no check, no lineage, no history: the floor), and
``pg_dump -t`` of a one-row table holding the row, restored by ``psql``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_pgmodels._pg.embedded import EmbeddedPostgres, binary  # noqa: E402


def _server(base: Path, name: str) -> EmbeddedPostgres:
    server = EmbeddedPostgres(base / name, durable=False)
    server.init()
    server.start()
    server.psql("CREATE DATABASE registry")
    return server


def _timed(cmd: str | list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--files", action="store_true", help="store the version as 'files' (pieces)")
    parser.add_argument("--child", nargs=2, metavar=("DEV_URI", "PROD_URI"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="pgmodels-bench-promote-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        dev, prod = _server(base, "dev"), _server(base, "prod")
        try:
            print(json.dumps(_measure(base, dev, prod, args.mib, args.files)), flush=True)
        finally:
            dev.stop("immediate")
            prod.stop("immediate")


def _measure(base: Path, dev: EmbeddedPostgres, prod: EmbeddedPostgres, mib: int, files: bool) -> dict:
    import mlflow
    from sklearn.linear_model import LinearRegression

    from mlflow_pgmodels._storage import model_binary
    from mlflow_pgmodels.registry_store import PgModelsRegistryStore

    dev_uri, prod_uri = dev.socket_uri("registry"), prod.socket_uri("registry")
    model_dir = base / "model"
    mlflow.sklearn.save_model(LinearRegression().fit([[0], [1]], [0, 1]), str(model_dir),
                              pip_requirements=["scikit-learn"])
    with open(model_dir / "weights.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    if files:
        model_binary.MAX_BLOB_BYTES = 1 << 20  # anything above 1 MiB is stored as files
    store = PgModelsRegistryStore(dev_uri)
    store.create_registered_model("big")
    store.create_model_version("big", str(model_dir))
    PgModelsRegistryStore(prod_uri)  # the schema, before anything is timed
    import psycopg

    with psycopg.connect(dev.socket_uri("registry", scheme="postgresql")) as conn:
        fmt, size = conn.execute("SELECT format, size_bytes FROM models").fetchone()

    env = {**os.environ, "MLFLOW_PGMODELS_PROGRESS": "0"}
    child = subprocess.run([sys.executable, __file__, "--child", dev_uri, prod_uri], env=env, check=True,
                           capture_output=True, text=True)
    inside = json.loads(child.stdout.strip().splitlines()[-1])
    cli = str(Path(sys.executable).with_name("mlflow-pgmodels"))
    again = _timed([cli, "promote", "models:/big/1", "--from", dev_uri, "--to", prod_uri], env=env)

    def psql(server: EmbeddedPostgres) -> str:
        return f"{binary('psql')} -X -q -v ON_ERROR_STOP=1 -U postgres -h {server.socket_dir} -p {server.port} -d registry"

    # the bytes: the row of models, or (a 'files' version) the pieces of its files
    table, rows = ("models", "SELECT * FROM models WHERE name = 'big' AND version = 1") if fmt == "mlflow-zip" else (
        "pgm_blob_pieces", "SELECT p.* FROM pgm_blob_pieces p JOIN pgm_version_files f ON f.blob_id = p.blob_id"
                           " WHERE f.name = 'big' AND f.version = 1")
    prod.psql(f"CREATE TABLE plain_copy (LIKE {table})", "registry")
    copy = _timed(f"{psql(dev)} -c \"COPY ({rows}) TO STDOUT (FORMAT binary)\""
                  f" | {psql(prod)} -c 'COPY plain_copy FROM STDIN (FORMAT binary)'", shell=True)
    dev.psql(f"CREATE TABLE one_row AS {rows}", "registry")
    dump = _timed(f"set -o pipefail; {binary('pg_dump')} -U postgres -h {dev.socket_dir} -p {dev.port} -d registry -t one_row"
                  f" | {psql(prod)}", shell=True, executable="/bin/bash")
    return {"mib": mib, "format": fmt, "stored_bytes": int(size), **inside,
            "promote_again_command_s": round(again, 2), "copy_pipe_s": round(copy, 2),
            "pg_dump_one_row_table_s": round(dump, 2)}


def _child(dev_uri: str, prod_uri: str) -> None:
    """In a new process, MLflow and the package imported first: promote's own time and client memory."""
    from mlflow_pgmodels._lifecycle.promote import promote
    from mlflow_pgmodels.registry_store import PgModelsRegistryStore

    PgModelsRegistryStore(dev_uri), PgModelsRegistryStore(prod_uri)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    promote("models:/big/1", prod_uri, source_uri=dev_uri)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"promote_s": round(seconds, 2), "promote_peak_rss_mib": round(peak / 1024, 1),
                      "promote_peak_rss_beyond_imports_mib": round((peak - before) / 1024, 1)}))


if __name__ == "__main__":
    main()
