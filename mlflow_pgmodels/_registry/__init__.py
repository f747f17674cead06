"""The model registry: MLflow's registry store on the ``models`` table, its one writer, versions, search."""
