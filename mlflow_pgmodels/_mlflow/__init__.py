"""The one seam to MLflow's internals: every private MLflow name the package uses, every MLflow
function it replaces at run time, and every assumption about MLflow's tables and server.

MLflow ships monthly and any release may rename or move these (3.18 renamed the alias
validators), so each is resolved here, by the names it has had, and nowhere else
(tests/test_mlflow_seam.py refuses private MLflow names in any module outside this package). Public MLflow API is
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

# the parts, by concern; every module of the package imports the seam as ``_mlflow``
from mlflow_pgmodels._mlflow._core import (  # noqa: F401
    MLFLOW_VERSION,
    TESTED_RANGE,
    IncompatibleMlflow,
    feature_disabled,
    incompatibility,
    mlflow_at_least,
    probing,
    problems,
    require,
    resolve,
    tested,
)
from mlflow_pgmodels._mlflow.registry import (  # noqa: F401
    REGISTERED_MODEL_META_FILE,
    parse_model_uri,
    validate_alias_name,
    validate_alias_name_reserved,
    validate_model_name,
    validate_model_renaming,
    validate_model_version,
    validate_model_version_tag,
    validate_registered_model_tag,
    validate_tag_name,
)
from mlflow_pgmodels._mlflow.schema import (  # noqa: F401
    ALEMBIC_VERSION_TABLE,
    EXPERIMENTS_TABLE,
    mlflow_migrations,
    mlflow_schema_head,
    upgrade_mlflow_schema,
)
from mlflow_pgmodels._mlflow.server import (  # noqa: F401
    SERVER_ARTIFACT_DESTINATION_ENV,
    SERVER_ARTIFACT_ROOT_ENV,
    SERVER_BACKEND_STORE_ENV,
    SERVER_DEFAULT_ARTIFACT_ROOT,
    SERVER_REGISTRY_STORE_ENV,
    authenticated_server_user,
    before_hard_delete_experiment,
    download_through_server_proxy,
    in_server,
    route_job_store,
    route_server_webhook_delivery,
    tolerate_half_imported_auth_module,
    workspaces_enabled,
)
from mlflow_pgmodels._mlflow.webhooks import (  # noqa: F401
    WEBHOOKS_SINCE,
    encrypted_string_type,
    generate_hmac_signature,
    require_webhooks,
    validate_webhook_events,
    validate_webhook_name,
    validate_webhook_url,
    webhook_http_adapter,
    webhooks_supported,
)
