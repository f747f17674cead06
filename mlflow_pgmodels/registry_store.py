"""MLflow's ``mlflow.model_registry_store`` entry point for ``pgmodels://`` URIs.

The store itself lives in ``mlflow_pgmodels/_registry/store.py``; this is its public name.
"""

from mlflow_pgmodels._registry.store import PgModelsRegistryStore

__all__ = ["PgModelsRegistryStore"]
