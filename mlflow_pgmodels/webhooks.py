"""MLflow's webhook API on the pgmodels registry store (mixed into PgModelsRegistryStore)."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import NOT_IMPLEMENTED
from mlflow.store.entities.paged_list import PagedList


class WebhookStoreMixin:
    """Webhook methods of the store; ``self.store_uri`` is the ``pgmodels://`` URI."""

    def list_webhooks(self, max_results=None, page_token=None):
        return PagedList([], None)

    def list_webhooks_by_event(self, event, max_results=None, page_token=None):
        return PagedList([], None)

    def _no_webhooks(self, *args, **kwargs):
        # NOT_IMPLEMENTED is HTTP 501, which MLflow's REST client does not retry (500 it would)
        raise MlflowException("Webhooks are not supported by the pgmodels registry store", NOT_IMPLEMENTED)

    create_webhook = get_webhook = update_webhook = delete_webhook = test_webhook = _no_webhooks
