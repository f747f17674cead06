"""The benchmark: this store against stock MLflow, one module per measurement family (see run.py)."""

MiB = 2**20
