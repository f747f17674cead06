"""MLflow's webhooks (3.3+): validators, the signature receivers verify, the delivery transport, the secret's column type."""

from __future__ import annotations

import importlib
from typing import Any

from mlflow_pgmodels._mlflow._core import feature_disabled, mlflow_at_least, resolve
from mlflow_pgmodels._mlflow.registry import VALIDATION as _V

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
