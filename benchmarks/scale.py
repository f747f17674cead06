"""The registry at scale: the UI's Models list and version searches at thousands of registered models.

Both sides on the run's PostgreSQL server, each in its own new database: this store, and stock
MLflow's ``SqlAlchemyStore`` (``postgresql+psycopg://``). Both registries are filled by plain SQL
with the same models, versions, stages, tags and aliases (10 versions per model), then the store
calls are timed: ``search_registered_models`` 100 a page in the UI's order (``name ASC``, with
latest versions), its first page and a deep one, and ``search_model_versions`` by name and by tag.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from typing import Any

from benchmarks import database
from benchmarks.bench import FULL, QUICK, Bench, timed
from benchmarks.report import Stat

SIZES = {FULL: (1_000, 10_000), QUICK: (100, 1_000)}  # registered models
ROUNDS = {FULL: 30, QUICK: 3}  # samples of each call: the calls take milliseconds, the machine's load varies
VERSIONS = 10  # per registered model: 1-3 archived, 8 Staging, 9 Production (alias champion), the rest None
PAGE = 100     # the UI's page size
DEEP = 50      # the deep page (the last one when there are fewer)
TAG_VALUES = 100  # version tag k = v0 .. v99, round robin: "tags.k='v17'" matches 1 % of the versions
BY_NAME, BY_TAG = "name='m_00042'", "tags.k='v17'"
PAGE_GOAL = 0.050  # seconds, for any page at the largest size

_NAME = "'m_' || to_char(i, 'FM00000')"
_SERIAL = f"(i * {VERSIONS} + v - 1)"  # one number per version, in the order they were made
_MODELS = "generate_series(0, %(models)s - 1) i"
_VERSIONS = f"{_MODELS}, generate_series(1, {VERSIONS}) v"

_OURS = [
    f"""INSERT INTO pgm_registered_models (name, description, created_at, last_updated_at, next_version)
        SELECT {_NAME}, 'model ' || i, timestamptz '2026-01-01' + i * interval '1 min',
               timestamptz '2026-01-01' + i * interval '1 min', {VERSIONS + 1} FROM {_MODELS}""",
    f"INSERT INTO pgm_registered_model_tags (name, key, value) SELECT {_NAME}, 'team', 'team_' || i %% 10 FROM {_MODELS}",
    f"""INSERT INTO models (name, version, model_type, event, model_binary, created_at, last_updated_at,
                           is_active, stage, format, sha256, size_bytes, user_id)
        SELECT {_NAME}, v, 'regression', 'default', %(blob)s, timestamp '2026-01-01' + {_SERIAL} * interval '1 s',
               timestamptz '2026-01-01' + {_SERIAL} * interval '1 s', v > 3,
               CASE v WHEN 8 THEN 'Staging' WHEN 9 THEN 'Production' ELSE 'None' END,
               'mlflow-zip', %(sha256)s, %(size)s, 'bench' FROM {_VERSIONS}""",
    f"""INSERT INTO pgm_model_version_tags (name, version, key, value)
        SELECT {_NAME}, v, 'k', 'v' || {_SERIAL} %% {TAG_VALUES} FROM {_VERSIONS}""",
    f"INSERT INTO pgm_aliases (name, alias, version) SELECT {_NAME}, 'champion', 9 FROM {_MODELS}",
]
_MS = "(extract(epoch FROM timestamptz '2026-01-01') * 1000)::bigint"
_STOCK = [
    f"""INSERT INTO registered_models (name, creation_time, last_updated_time, description)
        SELECT {_NAME}, {_MS} + i * 60000, {_MS} + i * 60000, 'model ' || i FROM {_MODELS}""",
    f"INSERT INTO registered_model_tags (key, value, name) SELECT 'team', 'team_' || i %% 10, {_NAME} FROM {_MODELS}",
    f"""INSERT INTO model_versions (name, version, creation_time, last_updated_time, user_id, current_stage,
                                   source, status, storage_location)
        SELECT {_NAME}, v, {_MS} + {_SERIAL} * 1000, {_MS} + {_SERIAL} * 1000, 'bench',
               CASE WHEN v <= 3 THEN 'Archived' WHEN v = 8 THEN 'Staging' WHEN v = 9 THEN 'Production' ELSE 'None' END,
               'file:///artifacts/' || {_SERIAL}, 'READY', 'file:///artifacts/' || {_SERIAL} FROM {_VERSIONS}""",
    f"""INSERT INTO model_version_tags (key, value, name, version)
        SELECT 'k', 'v' || {_SERIAL} %% {TAG_VALUES}, {_NAME}, v FROM {_VERSIONS}""",
    f"INSERT INTO registered_model_aliases (alias, version, name) SELECT 'champion', 9, {_NAME} FROM {_MODELS}",
]


def _tiny_zip() -> bytes:
    """A few bytes stored as each version's model: the queries measured here never read it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("MLmodel", "flavors: {}\n")
    return buf.getvalue()


def _fill(uri: str, statements: list[str], models: int) -> None:
    """Through ``uri`` (pgmodels://, either side's database): ``models`` models with their versions,
    tags and aliases; then VACUUM ANALYZE."""
    import psycopg

    blob = _tiny_zip()
    params = {"models": models, "blob": blob, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    with psycopg.connect(database.conninfo(uri), autocommit=True) as conn:
        with conn.transaction():
            for sql in statements:
                conn.execute(sql, {k: v for k, v in params.items() if f"%({k})s" in sql})
        conn.execute("VACUUM ANALYZE")


def _stores(bench: Bench, models: int):
    """(ours, stock): each registry store on a new database of the run's server, filled with ``models`` models."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    from mlflow_pgmodels.registry_store import PgModelsRegistryStore

    ours_db, stock_db = f"scale_ours_{models}", f"scale_stock_{models}"
    for name in (ours_db, stock_db):
        bench.server.psql(f"CREATE DATABASE {name}")
    ours_uri = bench.server.socket_uri(ours_db)
    stores = (PgModelsRegistryStore(ours_uri, tracking_uri=ours_uri),  # both create their tables
              SqlAlchemyStore(bench.server.socket_uri(stock_db, scheme="postgresql+psycopg")))
    _fill(ours_uri, _OURS, models)
    _fill(bench.server.socket_uri(stock_db), _STOCK, models)
    return stores


def _page_token(page: int) -> str | None:
    from mlflow.utils.search_utils import SearchUtils

    return SearchUtils.create_page_token((page - 1) * PAGE) if page > 1 else None


def _check(store, models: int, deep: int) -> None:
    """Both sides answer the same: full pages with latest versions, all versions of a name, 1 % by tag."""
    first = store.search_registered_models(max_results=PAGE)
    assert len(first) == min(PAGE, models) and first[0].name == "m_00000", store
    assert {mv.current_stage for mv in first[0].latest_versions} >= {"None", "Staging", "Production"}, store
    assert store.search_registered_models(max_results=PAGE, page_token=_page_token(deep))[0].name == \
        f"m_{(deep - 1) * PAGE:05d}", store
    assert len(store.search_model_versions(BY_NAME)) == VERSIONS, store
    assert len(store.search_model_versions(BY_TAG)) == models * VERSIONS // TAG_VALUES, store


def _calls(store, deep: int) -> dict[str, Callable[[], Any]]:
    """The calls timed; no deep page when there is only one."""
    calls = {
        "first": lambda: store.search_registered_models(max_results=PAGE),
        "deep": lambda: store.search_registered_models(max_results=PAGE, page_token=_page_token(deep)),
        "name": lambda: store.search_model_versions(BY_NAME),
        "tag": lambda: store.search_model_versions(BY_TAG),
    }
    if deep == 1:
        del calls["deep"]
    return calls


def scale(bench: Bench) -> None:
    """Each call at the plan's two registry sizes against stock; pages ≤ 50 ms and flat at the larger size.

    Both sizes are set up first, then the calls are timed in turns (every call of every store and
    size once per round), so that whatever else the machine does falls on all of them alike.
    """
    calls = {}
    for models in SIZES[bench.plan]:
        deep = min(DEEP, models // PAGE)
        for side, store in zip(("ours", "stock"), _stores(bench, models)):
            _check(store, models, deep)
            for key, call in _calls(store, deep).items():
                call()  # warm
                calls[side, models, key] = call
    samples = {at: [] for at in calls}
    for _ in range(ROUNDS[bench.plan]):
        for at, call in calls.items():
            samples[at].append(timed(call))
    for models in SIZES[bench.plan]:
        size = f"{models:,} models / {models * VERSIONS:,} versions"
        for key, what, goal in (("first", "Models list page 1", None),
                                ("deep", f"Models list page {min(DEEP, models // PAGE)}", None),
                                ("name", f'`search_model_versions("{BY_NAME}")`', 1.0),
                                ("tag", f'`search_model_versions("{BY_TAG}")`', 1.0)):
            if ("ours", models, key) not in samples:
                continue
            bench.row(f"{what}, {size}", Stat(samples["ours", models, key]),
                      Stat(samples["stock", models, key], label="stock"), goal)
    small, large = SIZES[bench.plan]
    slower = max(("first", "deep"), key=lambda key: Stat(samples.get(("ours", large, key), [0])).median)
    bench.row(f"Models list at {large:,} models: the slower of its two pages", Stat(samples["ours", large, slower]),
              Stat([PAGE_GOAL], label="goal"), 1.0)
    bench.row(f"Models list page 1: {large:,} models against {small:,} (flat)", Stat(samples["ours", large, "first"]),
              Stat(samples["ours", small, "first"], label=f"{small:,} models"), 1.2)
