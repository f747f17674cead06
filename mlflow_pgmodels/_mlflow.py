"""The one seam to MLflow's internals: every private MLflow name the package uses, every MLflow
function it replaces at run time, and every assumption about MLflow's tables and server.

MLflow ships monthly and any release may rename or move these (3.18 renamed the alias
validators), so each is resolved here, by the names it has had, and nowhere else
(tests/test_mlflow_seam.py refuses private MLflow names in any other module). Public MLflow API is
used directly everywhere.

A required internal that the installed MLflow lacks is an ERROR in the log when this module is
imported, and :class:`IncompatibleMlflow` (naming the MLflow version, what is missing and what to
do) from :func:`require`: the stores call it when MLflow builds them, the helper API and the
commands when they are imported. MLflow's plugin loader turns an ImportError of an entry point into
a warning and a silently unregistered scheme, so the entry-point modules themselves always import.
A feature that needs a newer MLflow than the oldest supported one (webhooks, workspaces) is
optional: its names resolve to stand-ins that raise FEATURE_DISABLED saying which MLflow it needs.

Imported while ``import mlflow`` runs (by the artifact repositories): only modules that MLflow has
loaded by then are imported at the top; the server's handlers and MLflow's SQL store are imported
on first use.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version as _dist_version
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import FEATURE_DISABLED, INVALID_STATE

_log = logging.getLogger(__name__)

# The MLflow releases this package is tested with (tests/compat_matrix.py, docs/compatibility.md):
# every minor from the first to the last, on its latest patch. pyproject.toml's floor is the first.
TESTED_RANGE = ("3.10", "3.18")


def _installed(dist: str) -> str:
    try:
        return _dist_version(dist)
    except PackageNotFoundError:
        return "not installed"


MLFLOW_VERSION = _installed("mlflow-skinny") if _installed("mlflow") == "not installed" else _installed("mlflow")


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def mlflow_at_least(release: str) -> bool:
    """Whether the installed MLflow is ``release`` (e.g. "3.3") or newer."""
    return _release(MLFLOW_VERSION) >= _release(release)


def tested() -> bool:
    """Whether the installed MLflow's minor is within :data:`TESTED_RANGE`."""
    minor = _release(MLFLOW_VERSION)[:2]
    return _release(TESTED_RANGE[0]) <= minor <= _release(TESTED_RANGE[1])


class IncompatibleMlflow(MlflowException, ImportError):
    """The installed MLflow lacks an internal this package needs (an MlflowException, and an
    ImportError for ``import`` statements)."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_STATE)


def _advice() -> str:
    low, high = TESTED_RANGE
    return (f"mlflow-pgmodels is tested with MLflow {low} to {high}; the installed MLflow is "
            f"{MLFLOW_VERSION}. Install a tested MLflow (pip install \"mlflow>={low},<{_next_minor(high)}\") "
            "or upgrade mlflow-pgmodels (pip install -U mlflow-pgmodels).")


def _next_minor(release: str) -> str:
    major, minor = _release(release)[:2]
    return f"{major}.{minor + 1}"


_problems: list[str] = []


def problems() -> list[str]:
    """What the installed MLflow lacks of what this package needs (empty when it fits)."""
    return list(_problems)


def incompatibility(missing: list[str]) -> IncompatibleMlflow:
    """The error for ``missing`` internals: names the MLflow version, what is missing, what to do."""
    listed = "; ".join(missing)
    return IncompatibleMlflow(f"mlflow-pgmodels cannot work with MLflow {MLFLOW_VERSION}: {listed}. {_advice()}")


def require() -> None:
    """Raise :class:`IncompatibleMlflow` unless every required internal was found."""
    if _problems:
        raise incompatibility(_problems)


class _Unavailable:
    """Stands in for a name the installed MLflow lacks; calling it raises ``error``."""

    def __init__(self, what: str, error: Callable[[], MlflowException]) -> None:
        self._what = what
        self._error = error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error()

    def __getattr__(self, name: str) -> Any:
        raise self._error()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<not in MLflow {MLFLOW_VERSION}: {self._what}>"


def feature_disabled(feature: str, since: str) -> MlflowException:
    """FEATURE_DISABLED for ``feature`` of this store, which needs MLflow ``since`` or newer."""
    return MlflowException(
        f"{feature} on the pgmodels:// store need MLflow {since} or newer; the installed MLflow is "
        f"{MLFLOW_VERSION}. Upgrade MLflow (pip install \"mlflow>={since}\") to use them.",
        error_code=FEATURE_DISABLED)


def resolve(module: str, *names: str, params: tuple[str, ...] = (), feature: str | None = None,
            since: str | None = None) -> Any:
    """The first of ``names`` that MLflow's ``module`` has (MLflow's names for it, oldest first or
    newest first: the first found wins), checked to take ``params`` (positional names, in order).

    Missing or changed: for a required name (``feature`` None) the problem is recorded for
    :func:`require` and logged at ERROR; for an optional one (``feature`` needing MLflow ``since``)
    nothing is recorded. Either way a stand-in is returned that raises the error when used.
    """
    what = f"{module}.{' or '.join(names)}"
    found = None
    try:
        imported = importlib.import_module(module)
    except ImportError:
        problem = f"module {module} is missing (wanted {' or '.join(names)})"
    else:
        found = next((getattr(imported, n) for n in names if hasattr(imported, n)), None)
        problem = None if found is not None else f"{what} is missing"
        if found is not None and params and not _takes(found, params):
            problem = f"{what} no longer takes the arguments ({', '.join(params)})"
            found = None
    if found is not None:
        return found
    if feature is not None:
        return _Unavailable(what, lambda: feature_disabled(feature, since or TESTED_RANGE[0]))
    _problems.append(problem)
    _log.error("%s", incompatibility([problem]).message)
    return _Unavailable(what, lambda: incompatibility([problem]))


def _takes(function: Callable, params: tuple[str, ...]) -> bool:
    """Whether ``function`` can be called with ``params`` as positional arguments (their names
    only document what the package passes: MLflow renaming a parameter changes nothing)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True  # a builtin without a signature: nothing to compare
    try:
        signature.bind(*params)
    except TypeError:
        return False
    return True


# ------------------------------------------------------------------------ validation (private)
_V = "mlflow.utils.validation"
validate_model_name = resolve(_V, "_validate_model_name", params=("model_name",))
_validate_model_version = resolve(_V, "_validate_model_version", params=("model_version",))


def validate_model_version(version: Any) -> int:
    """MLflow's check of a version number (str from REST, int from Python); the number as int
    (older MLflow validators return None)."""
    checked = _validate_model_version(version)
    return int(version) if checked is None else checked


validate_model_renaming = resolve(_V, "_validate_model_renaming", params=("model_new_name",))
validate_registered_model_tag = resolve(_V, "_validate_registered_model_tag", params=("key", "value"))
validate_model_version_tag = resolve(_V, "_validate_model_version_tag", params=("key", "value"))
validate_tag_name = resolve(_V, "_validate_tag_name", params=("name",))
# renamed in MLflow 3.18 (both were validators of model aliases, now of any alias)
validate_alias_name = resolve(_V, "_validate_alias_name", "_validate_model_alias_name", params=("alias",))
validate_alias_name_reserved = resolve(_V, "_validate_alias_name_reserved", "_validate_model_alias_name_reserved",
                                       params=("alias",))

# ------------------------------------------------------------------------ webhooks (MLflow 3.3)
WEBHOOKS_SINCE = "3.3"
_WEBHOOKS = "Webhooks"
validate_webhook_url = resolve(_V, "_validate_webhook_url", params=("url",), feature=_WEBHOOKS, since=WEBHOOKS_SINCE)
validate_webhook_name = resolve(_V, "_validate_webhook_name", params=("name",), feature=_WEBHOOKS,
                                since=WEBHOOKS_SINCE)
validate_webhook_events = resolve(_V, "_validate_webhook_events", params=("events",), feature=_WEBHOOKS,
                                  since=WEBHOOKS_SINCE)
# MLflow's signature of a delivery, so that receivers verify ours as they verify MLflow's
generate_hmac_signature = resolve("mlflow.webhooks.delivery", "_generate_hmac_signature",
                                  params=("secret", "delivery_id", "timestamp", "payload"),
                                  feature=_WEBHOOKS, since=WEBHOOKS_SINCE)


def webhook_http_adapter() -> Any:
    """The transport adapter for webhook deliveries: MLflow's, which checks at connect time that
    the peer is no private address (SSRF), where the installed MLflow has one (not 3.11 to 3.14),
    else requests' own (what MLflow itself delivers through there). No retries of its own."""
    try:
        ssrf = importlib.import_module("mlflow.webhooks.ssrf")
    except ImportError:
        ssrf = None
    adapter = getattr(ssrf, "SSRFProtectedHTTPAdapter", None)
    if adapter is None:
        from requests.adapters import HTTPAdapter

        adapter = HTTPAdapter
    return adapter(max_retries=0)


def webhooks_supported() -> bool:
    """Whether the installed MLflow has webhooks (entities, delivery, validators)."""
    return mlflow_at_least(WEBHOOKS_SINCE) and bool(generate_hmac_signature)


def require_webhooks() -> None:
    """FEATURE_DISABLED unless the installed MLflow has webhooks."""
    if not webhooks_supported():
        raise feature_disabled(_WEBHOOKS, WEBHOOKS_SINCE)


def encrypted_string_type() -> Any:
    """MLflow's SQLAlchemy column type for webhook secrets (Fernet, MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY)."""
    require_webhooks()
    return resolve("mlflow.store.model_registry.dbmodels.models", "EncryptedString", feature=_WEBHOOKS,
                   since=WEBHOOKS_SINCE)()


# ------------------------------------------------------------------------ workspaces (MLflow 3.10)
def workspaces_enabled() -> bool:
    """Whether MLflow's workspaces mode is on (MLFLOW_ENABLE_WORKSPACES; MLflow before 3.10 has none)."""
    env = importlib.import_module("mlflow.environment_variables")
    flag = getattr(env, "MLFLOW_ENABLE_WORKSPACES", None)
    return bool(flag.get()) if flag is not None else False


# ------------------------------------------------------------------------ models:/ URIs
parse_model_uri = resolve("mlflow.store.artifact.utils.models", "_parse_model_uri", params=("uri",))

# What MLflow's models:/ artifact repository writes into a download of a registered version
# (MLflow up to 3.17; 3.18 no longer does). Never part of a version's files.
REGISTERED_MODEL_META_FILE = "registered_model_meta"

# ------------------------------------------------------------------------ `mlflow server`
# Environment variables `mlflow server` sets for its workers (mlflow.server's constants; importing
# mlflow.server would import the whole server, which imports this store).
SERVER_BACKEND_STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"
SERVER_REGISTRY_STORE_ENV = "_MLFLOW_SERVER_REGISTRY_STORE"
SERVER_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"
SERVER_ARTIFACT_DESTINATION_ENV = "_MLFLOW_SERVER_ARTIFACT_DESTINATION"
SERVER_DEFAULT_ARTIFACT_ROOT = "mlflow-artifacts:/"  # `mlflow server`'s --default-artifact-root


def in_server() -> bool:
    """Whether this process is a worker of ``mlflow server`` (which sets its store URIs in the environment)."""
    return bool(os.environ.get(SERVER_REGISTRY_STORE_ENV))


def _handlers():
    return importlib.import_module("mlflow.server.handlers")


@functools.lru_cache(maxsize=None)
def _proxy_internals() -> tuple[Callable, Callable, Callable]:
    h = "mlflow.server.handlers"
    found = (resolve(h, "_is_servable_proxied_run_artifact_root", params=("run_artifact_root",)),
             resolve(h, "_get_proxied_run_artifact_destination_path", params=("proxied_artifact_root",)),
             resolve(h, "_get_artifact_repo_mlflow_artifacts"))
    require()
    return found


def download_through_server_proxy(uri: str, dst: str) -> str | None:
    """Inside ``mlflow server``: the files of an ``mlflow-artifacts:`` URI the server serves, read
    through its own artifact destination into ``dst``; None for other URIs and outside a server."""
    if os.environ.get(SERVER_ARTIFACT_ROOT_ENV) is None:
        return None
    servable, destination_path, repository = _proxy_internals()
    if not servable(uri):
        return None
    return repository().download_artifacts(destination_path(uri), dst_path=dst)


def tolerate_half_imported_auth_module() -> None:
    """Inside ``mlflow server`` 3.18: its assistant API must not fail while another request imports
    ``mlflow.server.auth``.

    MLflow's bug, on any 3.18 server without the ``mlflow[auth]`` extra (Flask-WTF): every
    ``search_runs`` request imports ``mlflow.server.auth``, which takes seconds and then fails on the
    missing Flask-WTF; meanwhile the module sits half-imported in ``sys.modules``, and the assistant
    API's ``auth_plugin_active()`` reads ``is_auth_enabled`` off it: AttributeError ("partially
    initialized module … most likely due to a circular import"), a traceback in the server log and
    an HTTP 500 in the UI. The replacement reads the flag only once the module defines it (the auth
    app is never on before then: its factory imports the whole module first). Once per process.
    """
    if not in_server():
        return
    try:
        identity = importlib.import_module("mlflow.server.assistant.identity")
    except ImportError:  # MLflow before the assistant's identity checks: nothing to race
        return
    current = getattr(identity, "auth_plugin_active", None)
    if current is None or getattr(current, "_pgmodels", False):
        return

    def auth_plugin_active() -> bool:
        is_auth_enabled = getattr(sys.modules.get("mlflow.server.auth"), "is_auth_enabled", None)
        return bool(is_auth_enabled and is_auth_enabled())

    auth_plugin_active._pgmodels = True
    identity.auth_plugin_active = auth_plugin_active


def route_server_webhook_delivery(skip: Callable[[Any, Any], bool]) -> None:
    """Replace ``mlflow server``'s ``deliver_webhook`` (which its REST handlers call after each
    registry write) by one that does nothing for the events ``skip(event, store)`` names; once."""
    handlers = _handlers()
    original = resolve("mlflow.server.handlers", "deliver_webhook", feature=_WEBHOOKS, since=WEBHOOKS_SINCE)
    if not original or getattr(original, "_pgmodels", False):
        return

    def deliver_webhook(*, event, payload, store):
        if skip(event, store):
            return None
        return original(event=event, payload=payload, store=store)

    deliver_webhook._pgmodels = True
    handlers.deliver_webhook = deliver_webhook


def before_hard_delete_experiment(store: Any, hook: Callable[[str], None]) -> None:
    """Make MLflow's SQL tracking ``store`` call ``hook(experiment_id)`` before it permanently
    deletes an experiment (``mlflow gc``); MLflow has no public hook for it."""
    hard_delete = getattr(store, "_hard_delete_experiment", None)
    if hard_delete is None:
        raise incompatibility([f"{type(store).__name__}._hard_delete_experiment is missing "
                               "(mlflow gc would leave a deleted experiment's files behind)"])

    def hard_delete_with_hook(experiment_id):
        hook(experiment_id)
        hard_delete(experiment_id)

    store._hard_delete_experiment = hard_delete_with_hook


# ------------------------------------------------------------------------ MLflow's tables
# What the package's SQL reads of MLflow's own schema (created and migrated by MLflow's Alembic).
EXPERIMENTS_TABLE = "experiments"  # columns experiment_id, artifact_location
ALEMBIC_VERSION_TABLE = "alembic_version"  # MLflow's Alembic revision (column version_num)



# ------------------------------------------------------------------------ MLflow's Alembic migrations
def _migration_scripts():
    from alembic.script import ScriptDirectory

    config = resolve("mlflow.store.db.utils", "_get_alembic_config", params=("db_url",))
    require()
    return ScriptDirectory.from_config(config(""))


def mlflow_schema_head() -> str:
    """The Alembic revision of the installed MLflow's newest tracking schema."""
    return _migration_scripts().get_current_head()


def mlflow_migrations(since: str | None) -> list[tuple[str, str]]:
    """(revision, description) of the installed MLflow's migrations after ``since`` (None: all), oldest
    first; LookupError when ``since`` is no revision the installed MLflow knows (a newer MLflow's)."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    scripts = _migration_scripts()
    try:
        steps = list(scripts.iterate_revisions(scripts.get_current_head(), since))
    except (CommandError, RevisionError) as e:
        raise LookupError(since) from e
    return [(s.revision, (s.doc or "").strip().splitlines()[0] if s.doc else "") for s in reversed(steps)]


def upgrade_mlflow_schema(sqlalchemy_url: str) -> None:
    """Run the installed MLflow's migrations on the database (what ``mlflow db upgrade`` does)."""
    import sqlalchemy

    upgrade = resolve("mlflow.store.db.utils", "_upgrade_db", params=("engine",))
    require()
    engine = sqlalchemy.create_engine(sqlalchemy_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


# --- inside mlflow server: who MLflow's authentication app authenticated

# Where MLflow's authentication app (``mlflow server --app-name basic-auth``) puts the user it has
# authenticated, in its before-request hook; MLflow's own handlers read it from there.
_AUTHENTICATED_USER = "mlflow_authenticated_user"


def authenticated_server_user() -> str | None:
    """The user MLflow's authentication app authenticated for the current request of ``mlflow server``.

    None outside a request, and when the server runs without an authentication app: then an
    ``Authorization`` header is whatever the client sent and proves nothing.
    """
    try:
        from flask import g, has_request_context
    except ImportError:
        return None
    if not has_request_context():
        return None
    return getattr(g, _AUTHENTICATED_USER, None)



def route_job_store(sqlalchemy_url: Callable[[str], str | None], prepare_engine: Callable[[object], None]) -> None:
    """Let MLflow's job execution accept our backend store URIs.

    MLflow's job backend (``mlflow server``'s job runner and ``/ajax-api/3.0/jobs``, ``mlflow gc
    --jobs``) needs a database URI it knows: ``mlflow.utils.uri.extract_db_type_from_uri`` decides
    whether a backend URI is one, and ``mlflow.store.jobs.sqlalchemy_store.SqlAlchemyJobStore``
    opens it with SQLAlchemy. ``sqlalchemy_url(uri)`` gives the SQLAlchemy URL of the same
    database for one of our URIs (None for any other URI; an error for one of ours it cannot
    use): the check then names that URL's database type, and the job store opens that URL and
    passes its engine to ``prepare_engine`` (MLflow shares one engine per URL between job stores).

    Idempotent. Runs while ``import mlflow`` does, so it imports only light MLflow modules; the
    job store class is wrapped when MLflow loads it.
    """
    import mlflow.utils.uri as mlflow_uri
    from mlflow.exceptions import MlflowException
    from mlflow.utils.import_hooks import register_post_import_hook

    check = mlflow_uri.extract_db_type_from_uri
    if getattr(check, "_pgmodels", False):
        return

    def extract_db_type_from_uri(db_uri):
        try:
            url = sqlalchemy_url(db_uri) if isinstance(db_uri, str) else None
        except MlflowException:
            # one of ours that cannot be used: the job store refuses it with our message (MLflow's
            # messages about a bad backend URI quote it, password included)
            return "postgresql"
        return check(url if url is not None else db_uri)

    extract_db_type_from_uri._pgmodels = True
    mlflow_uri.extract_db_type_from_uri = extract_db_type_from_uri

    def wrap_job_store(module) -> None:
        store_class = module.SqlAlchemyJobStore
        init = store_class.__init__
        if getattr(init, "_pgmodels", False):
            return

        def __init__(self, db_uri):
            url = sqlalchemy_url(db_uri) if isinstance(db_uri, str) else None
            init(self, url if url is not None else db_uri)
            if url is not None:
                prepare_engine(self.engine)

        __init__._pgmodels = True
        store_class.__init__ = __init__

    register_post_import_hook(wrap_job_store, "mlflow.store.jobs.sqlalchemy_store")
