"""mlflow-pgmodels: MLflow's model registry and artifact store in one PostgreSQL ``models`` table."""

__version__ = "0.1.0"
