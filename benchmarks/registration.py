"""Writes: ``log_model(..., registered_model_name=)`` on both sides, the register step against a plain COPY,
and many versions registered in a row against stock MLflow on PostgreSQL (``--registration``)."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from benchmarks import MiB, database
from benchmarks.bench import Bench, timed
from benchmarks.models import log_model, tiny_model
from benchmarks.report import Stat


def log_and_register(bench: Bench, model: Any, name: str, size: str) -> dict[str, list[str]]:
    """Log and register ``model`` as ``name`` on both sides; the version numbers made on each."""
    versions: dict[str, list[str]] = {"pgmodels": [], "stock": []}
    samples: dict[str, list[float]] = {"pgmodels": [], "stock": []}
    repeats = bench.plan.repeats if size != "512 MB" else 1
    for _ in range(repeats):
        for side in (bench.stock, bench.ours):  # alternate, so drift hits both alike
            side.activate()
            start = time.perf_counter()
            versions[side.name].append(log_model(model, name))
            samples[side.name].append(time.perf_counter() - start)
    bench.row(f"`log_model(..., registered_model_name=)`, {size}", Stat(samples["pgmodels"]),
              Stat(samples["stock"], label="stock"), 1.2 if size != "512 MB" else None)
    return versions


def database_part(bench: Bench, model: Any, size: str) -> None:
    """The register step alone (version number + COPY + digest) against a plain COPY of the same zip.

    ``create_model_version`` of a saved model directory packs it and inserts it; the packing,
    timed on its own just before, is taken off its time.
    """
    import mlflow

    from mlflow_pgmodels._storage import archive
    from mlflow_pgmodels.registry_store import PgModelsRegistryStore

    saved = bench.base / "scratch" / "saved"
    zip_path = bench.base / "scratch" / "model.zip"
    mlflow.sklearn.save_model(model, saved, serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    store = PgModelsRegistryStore(bench.ours.uri)
    store.create_registered_model("dbpart")
    database.create_copy_table(bench.pg)
    ours, copy, pack = [], [], []
    for _ in range(bench.plan.repeats):
        start = time.perf_counter()
        with archive.pack(str(saved)) as packed:
            pack.append(time.perf_counter() - start)
            whole = timed(store.create_model_version, "dbpart", str(saved), local_model_path=str(saved))
            ours.append(whole - pack[-1])
            with open(zip_path, "wb") as f:
                shutil.copyfileobj(packed, f, 8 * MiB)
        copy.append(timed(database.plain_copy, bench.pg, str(zip_path)))
        bench.pg.execute("TRUNCATE bench_copy")
    bench.row(f"register, database part, {size}", Stat(ours), Stat(copy, label="plain COPY"), 1.2)
    bench.row(f"register, packing the zip, {size}", Stat(pack), None, None)
    shutil.rmtree(saved)


IN_A_ROW = {True: 1000, False: 100}  # versions registered per way and side: full run, quick run
BLOCK = 10  # registrations of one side before the other side's turn


def many_versions(bench: Bench, full: bool) -> None:
    """Registering N versions of a tiny model in a row: this store against stock MLflow's
    ``SqlAlchemyStore`` on the same PostgreSQL server (each in a new database), store calls timed.

    Two ways, each its own registered model: a model directory on local disk
    (``create_model_version(name, dir, local_model_path=dir)``; ours packs it and stores the zip,
    stock records the path) and a LoggedModel (``models:/m-<id>``: ours assembles the zip from the
    files already in the database, stock looks the LoggedModel up). Sides take turns in blocks of
    ``BLOCK``, so whatever else the machine does falls on both alike.
    """
    import mlflow
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    from mlflow_pgmodels.registry_store import PgModelsRegistryStore

    tiny, _ = tiny_model()
    saved = bench.base / "scratch" / "tiny"
    mlflow.sklearn.save_model(tiny, saved, pip_requirements=["scikit-learn"])
    ours_uri, stock_uri = bench.server.socket_uri("reg_ours"), bench.server.socket_uri("reg_stock", scheme="postgresql+psycopg")
    for name in ("reg_ours", "reg_stock"):
        bench.server.psql(f"CREATE DATABASE {name}")
    logged = {}
    for side, uri in (("ours", ours_uri), ("stock", stock_uri)):  # stock last: its store finds it globally
        os.chdir(bench.base / side)
        mlflow.set_tracking_uri(uri)
        logged[side] = mlflow.sklearn.log_model(tiny, name="tiny", pip_requirements=["scikit-learn"]).model_id
    stores = {"ours": PgModelsRegistryStore(ours_uri, tracking_uri=ours_uri), "stock": SqlAlchemyStore(stock_uri)}
    calls = {}
    for side, store in stores.items():
        for way in ("dir", "logged"):
            store.create_registered_model(f"{way}_in_a_row")
        calls[side, "dir"] = lambda store=store: store.create_model_version(
            "dir_in_a_row", str(saved), local_model_path=str(saved))
        calls[side, "logged"] = lambda store=store, model_id=logged[side]: store.create_model_version(
            "logged_in_a_row", f"models:/{model_id}", model_id=model_id)
    samples = {at: [] for at in calls}
    n = IN_A_ROW[full]
    for block in range(n // BLOCK):
        for at in (list(calls) if block % 2 else list(reversed(calls))):
            samples[at] += [timed(calls[at]) for _ in range(BLOCK)]
    for side, store in stores.items():  # every call made a version, numbered one after another
        versions = store.search_model_versions("name='dir_in_a_row'", max_results=n + 1)
        assert sorted(int(v.version) for v in versions) == list(range(1, n + 1)), side
    def ms(at: tuple[str, str], label: str = "") -> Stat:
        return Stat([s * 1000 for s in samples[at]], unit="ms", label=label)

    bench.row(f"register a version of a model directory (`create_model_version`), {n:,} in a row",
              ms(("ours", "dir")), ms(("stock", "dir"), "stock on PostgreSQL"), 1.2)
    bench.row(f"register a version of a LoggedModel (`models:/m-…`), {n:,} in a row",
              ms(("ours", "logged")), ms(("stock", "logged"), "stock on PostgreSQL"), 1.2)
    turns = _round_trips(bench, logged, str(saved))
    for way, what in (("dir", "a model directory"), ("logged", "a LoggedModel")):
        bench.row(f"round trips to PostgreSQL per registration of {what} (counted on the wire)",
                  Stat([turns["ours", way]], unit=""), Stat([turns["stock", way]], unit="", label="stock"), None)
    bench.facts["round trips per registration"] = {f"{side} {way}": n for (side, way), n in turns.items()}


def _round_trips(bench: Bench, logged: dict[str, str], saved: str, calls: int = 20) -> dict[tuple[str, str], float]:
    """Round trips each registration makes, on average over ``calls``, through a counting forwarder
    (benchmarks/wire.py): the times the client waits for PostgreSQL, whatever else the machine does."""
    import mlflow
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    from benchmarks.wire import Forwarder, forwarded_uri, server_socket
    from mlflow_pgmodels.registry_store import PgModelsRegistryStore

    got = {}
    with Forwarder(server_socket(bench.server.socket_uri("reg_ours"))) as fwd:
        ours_uri = forwarded_uri(bench.server.socket_uri("reg_ours"), fwd.port)
        stock_uri = forwarded_uri(bench.server.socket_uri("reg_stock"), fwd.port).replace(
            "pgmodels://", "postgresql+psycopg://")
        for side, store in (("ours", PgModelsRegistryStore(ours_uri, tracking_uri=ours_uri)),
                            ("stock", SqlAlchemyStore(stock_uri))):
            mlflow.set_tracking_uri(ours_uri if side == "ours" else stock_uri)  # stock finds its LoggedModel here
            for way, call in (("dir", lambda: store.create_model_version("dir_in_a_row", saved, local_model_path=saved)),
                              ("logged", lambda: store.create_model_version(
                                  "logged_in_a_row", f"models:/{logged[side]}", model_id=logged[side]))):
                call()  # connections opened, statements prepared
                fwd.reset()
                for _ in range(calls):
                    call()
                got[side, way] = fwd.turns / calls
    return got
