"""mlflow-pgmodels: MLflow's model registry and artifact store in one PostgreSQL ``models`` table.

The seed's helper functions (``save_model_to_db`` …, see helpers.py) are exported here; they are
imported on first use, because MLflow loads this package while ``import mlflow`` runs.
"""

# MLflow first, whatever module of this package is imported first: importing mlflow loads our
# entry points (artifact_repo, tracking_store), and a module that is itself half-imported at that
# moment (``import mlflow_pgmodels.uri`` as a program's first import) would fail to register, with
# only a warning. When mlflow is the one importing us, this gets its half-built module: harmless.
import mlflow  # noqa: F401  (importing it is the point)

__version__ = "0.1.0"

_HELPERS = ("save_model_to_db", "load_model_from_db", "get_latest_model_version", "deactivate_model",
            "activate_model")
__all__ = [*_HELPERS, "promote_version"]


def __getattr__(name: str):
    if name == "promote_version":  # the function of promote.py (``mlflow_pgmodels.promote`` is the module)
        from mlflow_pgmodels.promote import promote

        return promote
    if name in _HELPERS:
        from mlflow_pgmodels import helpers

        return getattr(helpers, name)
    raise AttributeError(f"module 'mlflow_pgmodels' has no attribute {name!r}")
