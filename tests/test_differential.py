"""The same registry calls against this store and against MLflow's own SQL store, result by result.

MLflow's ``SqlAlchemyStore`` runs on a second fresh database of the same PostgreSQL server
(``postgresql+psycopg://``). Every call's result is reduced to what a user sees (names, versions,
stages, descriptions, tags, aliases, search order, error codes) and compared. The differences
that are there on purpose are listed in ``INTENDED`` and checked as such, each with its reason.
"""

from __future__ import annotations

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag, RegisteredModel, RegisteredModelTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

from mlflow_pgmodels import _mlflow
from mlflow_pgmodels.registry_store import PgModelsRegistryStore
from tests import sample
from tests.conftest import make_database

# Tags every version of this store reports: they are the models.event / models.model_type columns.
COLUMN_TAGS = {"event", "model_type"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return sample.saved(tmp_path_factory.mktemp("src") / "model")


@pytest.fixture
def stores(db, pg):
    """(ours, MLflow's SqlAlchemyStore), each on its own fresh database."""
    theirs_db = make_database(pg)
    theirs = SqlAlchemyStore(theirs_db.server.socket_uri(theirs_db.name, scheme="postgresql+psycopg"))
    yield PgModelsRegistryStore(db.uri, tracking_uri=db.uri), theirs
    theirs.engine.dispose()
    pg.psql(f"DROP DATABASE IF EXISTS {theirs_db.name} WITH (FORCE)")


def seen(result):
    """What a user compares of one call's result (no timestamps, sources or ids)."""
    if isinstance(result, MlflowException):
        return ("error", result.error_code)
    if isinstance(result, ModelVersion):
        return {"name": result.name, "version": result.version, "stage": result.current_stage,
                "description": result.description or None, "run_id": result.run_id or None,
                "status": result.status, "aliases": sorted(result.aliases),
                "tags": {k: v for k, v in result.tags.items() if k not in COLUMN_TAGS}}
    if isinstance(result, RegisteredModel):
        return {"name": result.name, "description": result.description or None, "tags": result.tags,
                "aliases": {k: int(v) for k, v in result.aliases.items()},
                # intended: latest_versions lists only the active stages (see INTENDED)
                "latest": sorted((mv.version, mv.current_stage) for mv in result.latest_versions
                                 if mv.current_stage != "Archived")}
    if isinstance(result, list):  # also PagedList
        return [seen(r) for r in result] + ([("next page", bool(result.token))] if hasattr(result, "token") else [])
    return result


# Calls this store answers differently on purpose: (ours, MLflow's), and why.
DIFFERENT_ON_PURPOSE = {
    # with archive_existing_versions, MLflow's store compares the version column with the string
    # version REST sends ("1"), which PostgreSQL refuses; versions arrive as str or int here
    ("transition_model_version_stage", ("price", "1", "staging", True)): (
        {"name": "price", "version": 1, "stage": "Staging", "description": None, "run_id": None,
         "status": "READY", "aliases": [], "tags": {}},
        ("error", "BAD_REQUEST")),
    # every refusal carries a code: MLflow's code-less error is an HTTP 500, which REST clients retry
    ("transition_model_version_stage", ("churn", "3", "None", True)): (
        ("error", "INVALID_PARAMETER_VALUE"), ("error", "INTERNAL_ERROR")),
    # versions are whole numbers from 1 to 2**31-1 (models.version is an INTEGER): anything else is
    # refused as invalid. MLflow looks 0 and -1 up (not found) and passes on PostgreSQL's "integer
    # out of range" as BAD_REQUEST
    ("get_model_version", ("churn", "0")): (("error", "INVALID_PARAMETER_VALUE"), ("error", "RESOURCE_DOES_NOT_EXIST")),
    ("get_model_version", ("churn", "-1")): (("error", "INVALID_PARAMETER_VALUE"), ("error", "RESOURCE_DOES_NOT_EXIST")),
    ("get_model_version", ("churn", str(2**31))): (("error", "INVALID_PARAMETER_VALUE"), ("error", "BAD_REQUEST")),
    ("set_registered_model_alias", ("churn", "big", 2**40)): (
        ("error", "INVALID_PARAMETER_VALUE"), ("error", "BAD_REQUEST")),
    # MLflow answers max_results=0 with an empty page whose token points at the same place again
    ("search_registered_models", (None, 0)): (
        ("error", "INVALID_PARAMETER_VALUE"), [("next page", True)]),
}


def _without_aliases(result):
    return [dict(r, aliases=[]) if isinstance(r, dict) else r for r in result] if isinstance(result, list) else result


def call(store, method: str, *args, **kwargs):
    try:
        return getattr(store, method)(*args, **kwargs)
    except MlflowException as e:
        return e
    except Exception as e:  # noqa: BLE001 - a crash is a result to compare too
        return ("crash", type(e).__name__)


def sequence(src: str):
    """The registry calls, as (method, args, kwargs); compared one by one."""
    run_a, run_b = "a" * 32, "b" * 32
    rm_tag, mv_tag = RegisteredModelTag, ModelVersionTag
    return [
        # registered models
        ("create_registered_model", ("churn",), {"tags": [rm_tag("team", "risk")], "description": "who leaves"}),
        ("create_registered_model", ("churn",), {}),
        ("create_registered_model", ("price",), {}),
        ("create_registered_model", ("Price-2",), {"tags": [rm_tag("team", "pricing")]}),
        ("create_registered_model", ("bad/name",), {}),
        ("get_registered_model", ("missing",), {}),
        ("get_registered_model", ("bad/name",), {}),
        ("update_registered_model", ("bad/name",), {"description": "x"}),
        ("delete_registered_model", ("bad/name",), {}),
        ("get_model_version", ("bad/name", "1"), {}),
        ("get_latest_versions", ("bad/name",), {}),
        ("delete_registered_model_tag", ("missing", "k"), {}),
        ("update_registered_model", ("price",), {"description": "what it costs"}),
        ("update_registered_model", ("missing",), {"description": "x"}),
        ("set_registered_model_tag", ("price", rm_tag("owner", "ann")), {}),
        ("set_registered_model_tag", ("price", rm_tag("owner", "bob")), {}),
        ("set_registered_model_tag", ("missing", rm_tag("owner", "bob")), {}),
        ("delete_registered_model_tag", ("price", "owner"), {}),
        ("delete_registered_model_tag", ("price", "never-set"), {}),
        ("get_registered_model", ("price",), {}),
        # versions
        ("create_model_version", ("churn", src), {"run_id": run_a, "tags": [mv_tag("k", "v1")]}),
        ("create_model_version", ("churn", src), {"run_id": run_b, "description": "second"}),
        ("create_model_version", ("churn", src), {"run_id": run_a, "tags": [mv_tag("k", "v3")]}),
        ("create_model_version", ("price", src), {}),
        ("create_model_version", ("missing", src), {}),
        ("get_model_version", ("churn", "2"), {}),
        ("get_model_version", ("churn", 3), {}),
        ("get_model_version", ("churn", "99"), {}),
        ("get_model_version", ("churn", "abc"), {}),
        ("get_model_version", ("churn", "0"), {}),
        ("get_model_version", ("churn", "-1"), {}),
        ("get_model_version", ("churn", str(2**31)), {}),
        ("set_registered_model_alias", ("churn", "big", 2**40), {}),
        ("delete_model_version", ("churn", "99"), {}),
        ("delete_model_version_tag", ("churn", "99", "k"), {}),
        ("get_model_version_download_uri", ("churn", "99"), {}),
        ("set_registered_model_tag", ("price", rm_tag("", "x")), {}),
        ("set_model_version_tag", ("churn", "1", mv_tag("bad key!", "x")), {}),
        ("get_model_version", ("missing", "1"), {}),
        ("update_model_version", ("churn", "1", "first"), {}),
        ("update_model_version", ("churn", "99", "x"), {}),
        ("set_model_version_tag", ("churn", "1", mv_tag("k", "changed")), {}),
        ("set_model_version_tag", ("churn", "99", mv_tag("k", "x")), {}),
        ("delete_model_version_tag", ("churn", "3", "k"), {}),
        ("delete_model_version_tag", ("churn", "3", "never-set"), {}),
        ("get_model_version", ("churn", "1"), {}),
        ("get_model_version", ("churn", "3"), {}),
        # stages
        ("transition_model_version_stage", ("churn", "1", "Production", False), {}),
        ("transition_model_version_stage", ("churn", 2, "Production", True), {}),
        ("transition_model_version_stage", ("price", "1", "staging", True), {}),
        ("transition_model_version_stage", ("price", "1", "none", False), {}),
        ("get_model_version", ("churn", "1"), {}),
        ("transition_model_version_stage", ("churn", "3", "Staging", False), {}),
        ("transition_model_version_stage", ("churn", "3", "Bogus", False), {}),
        ("transition_model_version_stage", ("churn", "3", "None", True), {}),
        ("transition_model_version_stage", ("churn", "99", "Staging", False), {}),
        ("get_latest_versions", ("churn", ["Production"]), {}),
        ("get_latest_versions", ("churn", ["staging", "Production"]), {}),
        ("get_latest_versions", ("churn", ["Archived"]), {}),
        ("get_latest_versions", ("missing", ["Production"]), {}),
        ("get_registered_model", ("churn",), {}),
        # aliases
        ("set_registered_model_alias", ("churn", "champion", "2"), {}),
        ("set_registered_model_alias", ("churn", "challenger", 3), {}),
        ("set_registered_model_alias", ("churn", "champion", "3"), {}),
        ("set_registered_model_alias", ("churn", "latest", "3"), {}),
        ("set_registered_model_alias", ("churn", "ghost", "99"), {}),
        ("set_registered_model_alias", ("missing", "champion", "1"), {}),
        ("get_model_version_by_alias", ("churn", "champion"), {}),
        ("get_model_version_by_alias", ("churn", "nobody"), {}),
        ("get_model_version_by_alias", ("missing", "champion"), {}),
        ("get_model_version_by_alias", ("missing", "latest"), {}),
        ("get_model_version_by_alias", ("churn", "Latest"), {}),
        ("get_registered_model", ("churn",), {}),
        ("delete_registered_model_alias", ("churn", "challenger"), {}),
        ("delete_registered_model_alias", ("churn", "nobody"), {}),
        ("delete_registered_model_alias", ("missing", "nobody"), {}),
        ("get_model_version_by_alias", ("churn", "bad alias!"), {}),
        ("get_model_version", ("churn", "3"), {}),
        # searches
        ("search_registered_models", (), {}),
        ("search_registered_models", ("name = 'churn'",), {}),
        ("search_registered_models", ("name LIKE 'p%'",), {}),
        ("search_registered_models", ("name ILIKE 'p%'",), {}),
        ("search_registered_models", ("name IN ('churn', 'price', 'nope')",), {}),
        ("search_registered_models", ("name != 'churn'",), {}),
        ("search_registered_models", ("tags.team = 'risk'",), {}),
        ("search_registered_models", ("tags.`team` LIKE '%i%'",), {}),
        ("search_registered_models", ("tag.team ILIKE 'RISK'",), {}),
        ("search_registered_models", ("tags.team != 'risk'",), {}),
        ("search_registered_models", ("name LIKE '%' AND tags.`mlflow.prompt.is_prompt` != 'true'",), {}),
        ("search_registered_models", (None, 2, ["name DESC"]), {}),
        ("search_registered_models", (None, 10, ["timestamp DESC"]), {}),
        ("search_registered_models", (None, 10, ["last_updated_timestamp ASC"]), {}),
        ("search_registered_models", ("name = ",), {}),
        ("search_registered_models", ("owner = 'x'",), {}),
        ("search_registered_models", ("tags.team IS NULL",), {}),
        ("search_registered_models", (None, 1001), {}),
        ("search_registered_models", (None, 0), {}),
        ("search_registered_models", (None, 10, ["bogus"]), {}),
        ("search_registered_models", (None, 10, None, "not-a-token"), {}),
        ("search_model_versions", ("name = 'churn'", 10, ["version_number ASC"]), {}),
        ("search_model_versions", (f"run_id = '{run_a}'", 10, ["version_number DESC"]), {}),
        ("search_model_versions", (f"run_id IN ('{run_a}', '{run_b}') AND name = 'churn'", 10,
                                   ["version_number ASC"]), {}),
        ("search_model_versions", ("name = 'churn' AND version_number > 1", 10, ["version_number ASC"]), {}),
        ("search_model_versions", ("tags.k = 'changed'",), {}),
        ("search_model_versions", ("tag.`k` LIKE 'v%'",), {}),
        ("search_model_versions", ("name ILIKE 'CH%'", 2, ["name ASC", "version_number DESC"]), {}),
        ("search_model_versions", (None, 10, ["name ASC", "version_number ASC"]), {}),
        ("search_model_versions", ("version_number = 'x'",), {}),
        ("search_model_versions", ("stage = 'Production'",), {}),
        ("search_model_versions", (None, 10, ["stage ASC"]), {}),
        ("search_model_versions", (None, 200_001), {}),
        # delete, renumber, rename, copy
        ("delete_model_version", ("churn", "3"), {}),
        ("delete_model_version", ("churn", "3"), {}),
        ("get_model_version", ("churn", "3"), {}),
        ("get_registered_model", ("churn",), {}),
        ("create_model_version", ("churn", src), {}),
        ("rename_registered_model", ("churn", "attrition"), {}),
        ("rename_registered_model", ("attrition", "price"), {}),
        ("rename_registered_model", ("missing", "other"), {}),
        ("get_registered_model", ("churn",), {}),
        ("get_registered_model", ("attrition",), {}),
        ("get_model_version", ("attrition", "2"), {}),
        ("get_model_version_by_alias", ("attrition", "champion"), {}),
        ("search_model_versions", ("name = 'attrition'", 10, ["version_number ASC"]), {}),
        ("delete_registered_model", ("price",), {}),
        ("delete_registered_model", ("price",), {}),
        ("get_model_version", ("price", "1"), {}),
        ("create_registered_model", ("price",), {}),
        ("create_model_version", ("price", src), {}),
        ("search_registered_models", (None, 100, ["name ASC"]), {}),
    ]


# Calls MLflow answered differently before a release and as this store since: (release, ours, MLflow's before).
MLFLOW_CHANGED_IN = {
    # MLflow's filter parser crashed (ValueError, an HTTP 500) on IS NULL before 3.18; both refuse it
    # as a bad request now, as this store always did
    ("search_registered_models", ("tags.team IS NULL",)): (
        "3.18", ("error", "INVALID_PARAMETER_VALUE"), ("crash", "ValueError")),
}


def expected_difference(method: str, args: tuple):
    """(ours, MLflow's) for a call answered differently on the installed MLflow, else None."""
    changed = next((v for k, v in MLFLOW_CHANGED_IN.items() if k == (method, args)), None)
    if changed:
        release, ours, before = changed
        return (ours, ours) if _mlflow.mlflow_at_least(release) else (ours, before)
    return next((v for k, v in DIFFERENT_ON_PURPOSE.items() if k == (method, args)), None)


def test_registry_calls_give_the_same_results_as_mlflows_sql_store(stores, model_dir):
    ours, theirs = stores
    mismatches = []
    for method, args, kwargs in sequence(model_dir):
        got = seen(call(ours, method, *args, **kwargs)), seen(call(theirs, method, *args, **kwargs))
        if method == "get_latest_versions":  # one per stage, in no promised order (MLflow: dict order)
            got = tuple(sorted(g, key=str) if isinstance(g, list) else g for g in got)
        if method == "search_model_versions":
            # intended: versions found by a search carry their aliases here; MLflow's SQL store
            # fills them only in get_model_version (compared above), in searches they are empty
            got = (_without_aliases(got[0]), got[1])
        expected = expected_difference(method, args)
        if (got != expected) if expected else (got[0] != got[1]):
            mismatches.append(f"{method}{args}: ours={got[0]!r} mlflow={got[1]!r}")
    assert not mismatches, "\n".join(mismatches)


def test_paging_through_searches_gives_the_same_pages(stores, model_dir):
    for store in stores:
        for name in ("a", "b", "c", "d", "e"):
            store.create_registered_model(name)
            store.create_model_version(name, model_dir)
            store.create_model_version(name, model_dir)

    def pages(store, method, **kwargs):
        out, token = [], None
        while True:
            page = getattr(store, method)(max_results=3, page_token=token, **kwargs)
            out.append(seen(list(page)))
            token = page.token
            if not token:
                return out

    ours, theirs = stores
    assert pages(ours, "search_registered_models", order_by=["name DESC"]) == \
        pages(theirs, "search_registered_models", order_by=["name DESC"])
    assert pages(ours, "search_model_versions", order_by=["name ASC", "version_number DESC"]) == \
        pages(theirs, "search_model_versions", order_by=["name ASC", "version_number DESC"])
    assert len(pages(ours, "search_model_versions", order_by=["name ASC"])) == 4  # 10 versions, 3 a page


# ---------------------------------------------------------------------------------------------
# The differences on purpose, each shown side by side.

def test_intended_latest_is_the_highest_active_version(stores, model_dir):
    """``latest`` (get_latest_versions with no stages, ``@latest``, ``models:/x/latest``) skips
    archived versions here: is_active=false means "do not serve". MLflow counts Archived too."""
    for store in stores:
        store.create_registered_model("churn")
        for _ in range(3):
            store.create_model_version("churn", model_dir)
        store.transition_model_version_stage("churn", "3", "Archived", False)
        store.transition_model_version_stage("churn", "1", "Production", False)
    ours, theirs = stores
    assert sorted((int(m.version), m.current_stage) for m in ours.get_latest_versions("churn")) == \
        [(1, "Production"), (2, "None")]
    assert sorted((int(m.version), m.current_stage) for m in theirs.get_latest_versions("churn")) == \
        [(1, "Production"), (2, "None"), (3, "Archived")]
    # [] (what REST sends for "no stages") is the same as None in both
    assert [m.version for m in ours.get_latest_versions("churn", [])] == \
        [m.version for m in ours.get_latest_versions("churn", None)]
    assert int(ours.get_model_version_by_alias("churn", "latest").version) == 2
    assert int(theirs.get_model_version_by_alias("churn", "latest").version) == 3
    # and the registered model's latest_versions lists only active stages
    assert sorted(m.current_stage for m in ours.get_registered_model("churn").latest_versions) == \
        ["None", "Production"]
    assert "Archived" in [m.current_stage for m in theirs.get_registered_model("churn").latest_versions]
    # with every version archived there is no latest: an error that says so, not an empty list
    # (from which MLflow would report "No versions of model with name 'churn' found")
    for store in stores:
        for version in ("1", "2"):
            store.transition_model_version_stage("churn", version, "Archived", False)
    with pytest.raises(MlflowException, match="no active version") as e:
        ours.get_latest_versions("churn")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert [m.current_stage for m in theirs.get_latest_versions("churn")] == ["Archived"]


def test_intended_event_and_model_type_are_always_reported_as_tags(stores, model_dir):
    """They are NOT NULL columns of the seed's models table, so every version has them: from the
    version's tags, else the registered model's tags, else 'default' / 'unspecified'."""
    for store in stores:
        store.create_registered_model("churn", tags=[RegisteredModelTag("model_type", "classifier_binary")])
        store.create_model_version("churn", model_dir, tags=[ModelVersionTag("other", "x")])
    ours, theirs = stores
    assert ours.get_model_version("churn", 1).tags == \
        {"other": "x", "event": "default", "model_type": "classifier_binary"}
    assert theirs.get_model_version("churn", 1).tags == {"other": "x"}


def test_intended_model_id_is_kept(stores, model_dir):
    """The LoggedModel id of a version is stored (MLflow's SQL store drops it)."""
    for store in stores:
        store.create_registered_model("churn")
        store.create_model_version("churn", model_dir, run_id="a" * 32, model_id="m-0123456789abcdef")
    ours, theirs = stores
    assert ours.get_model_version("churn", 1).model_id == "m-0123456789abcdef"
    assert theirs.get_model_version("churn", 1).model_id is None


def test_intended_download_uri_points_into_the_database(stores, model_dir):
    """MLflow hands back the source it was given; here the bytes live in the row, so the
    download URI names the row (and never carries credentials)."""
    for store in stores:
        store.create_registered_model("churn")
        store.create_model_version("churn", model_dir)
    ours, theirs = stores
    assert ours.get_model_version_download_uri("churn", "1") == "pgmodels:/churn/1"
    assert theirs.get_model_version_download_uri("churn", "1") == model_dir


def test_numbers_restart_only_when_the_whole_model_is_recreated(stores, model_dir):
    """Same in both: a deleted version's number is never given out again, but deleting the
    registered model forgets its numbers."""
    results = []
    for store in stores:
        store.create_registered_model("churn")
        store.create_model_version("churn", model_dir)
        store.create_model_version("churn", model_dir)
        store.delete_model_version("churn", "2")
        after_delete = store.create_model_version("churn", model_dir).version
        store.delete_registered_model("churn")
        store.create_registered_model("churn")
        after_recreate = store.create_model_version("churn", model_dir).version
        results.append((int(after_delete), int(after_recreate)))
    assert results == [(3, 1), (3, 1)]
