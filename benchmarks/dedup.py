"""Each file once (issue 19): the same 100 MB file logged into 10 runs, what the database holds and
what the client sends each time.

    python -m benchmarks.dedup [--mib 100] [--runs 10]

Starts its own throwaway PostgreSQL. Space is ``pg_total_relation_size`` of ``pgm_blob_pieces``
(TOAST and indexes included) before and after; bytes sent are counted by a TCP forwarder between
the client and PostgreSQL (benchmarks/wire.py), so they are what travelled, not an estimate.
Run it against another checkout (``PYTHONPATH=/path/to/checkout``) to compare with a release
without content addressing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks import MiB
from benchmarks.wire import Forwarder, forwarded_uri, server_socket
from mlflow_pgmodels._pg.embedded import EmbeddedPostgres


def _pieces_size(conn) -> int:
    return conn.execute("SELECT pg_total_relation_size('pgm_blob_pieces')").fetchone()[0]


def _parts(pg, local: str) -> dict:
    """The two costs of logging a file already stored: hashing it locally, re-hashing it in PostgreSQL."""
    try:
        from mlflow_pgmodels._storage.blobs import fingerprint
    except ImportError:  # a checkout without content addressing
        return {}
    start = time.perf_counter()
    fingerprint(local)
    local_s = time.perf_counter() - start
    blob_id = pg.execute("SELECT min(id) FROM pgm_blobs WHERE size_bytes = %s", (os.path.getsize(local),)).fetchone()[0]
    start = time.perf_counter()
    pg.execute("SELECT sha256(data) FROM pgm_blob_pieces WHERE blob_id = %s ORDER BY seq", (blob_id,)).fetchall()
    return {"local_hash_seconds": round(local_s, 2), "server_rehash_seconds": round(time.perf_counter() - start, 2)}


def measure(work: Path, mib: int, runs: int) -> dict:
    """Log one ``mib`` MiB random file into ``runs`` runs; the sizes and per-run bytes sent and seconds."""
    import mlflow

    server = EmbeddedPostgres(work / "data", durable=False).start()
    try:
        server.psql("CREATE DATABASE dedup")
        uri = server.socket_uri("dedup")
        subprocess.run([sys.executable, "-c",
                        "import sys; from mlflow_pgmodels.tracking_store import build_tracking_store; "
                        "from mlflow_pgmodels._pg.schema import ensure_schema; "
                        "build_tracking_store(sys.argv[1]); ensure_schema(sys.argv[1])", uri],
                       check=True, capture_output=True)
        local = work / "dataset.bin"
        with open(local, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MiB))
        os.environ["MLFLOW_PGMODELS_PROGRESS"] = "0"
        with psycopg.connect(server.socket_uri("dedup", scheme="postgresql"), autocommit=True) as pg, \
                Forwarder(server_socket(uri)) as fwd:
            before = _pieces_size(pg)
            mlflow.set_tracking_uri(forwarded_uri(uri, fwd.port))
            with mlflow.start_run():  # connections and caches of this URI
                mlflow.log_text("warm-up", "warm.txt")
            sent, seconds = [], []
            for _ in range(runs):
                with mlflow.start_run():
                    fwd.reset()
                    start = time.perf_counter()
                    mlflow.log_artifact(str(local), "data")
                    seconds.append(time.perf_counter() - start)
                    sent.append(fwd.reset()[0])
            after = _pieces_size(pg)
            blobs = pg.execute("SELECT count(*), coalesce(sum(size_bytes), 0) FROM pgm_blobs").fetchone()
            parts = _parts(pg, str(local))
        return {"file_mib": mib, "runs": runs, "pieces_table_growth_mib": (after - before) / MiB,
                "blobs": blobs[0], "blob_bytes_mib": int(blobs[1]) / MiB,
                "sent_mib": [round(s / MiB, 3) for s in sent], "seconds": [round(s, 2) for s in seconds], **parts}
    finally:
        server.stop("immediate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgmodels-dedup-") as work:
        os.chmod(work, 0o755)
        os.chdir(work)
        result = measure(Path(work), args.mib, args.runs)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
