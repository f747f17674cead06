"""The subcommands of ``mlflow-pgmodels`` (cli.py dispatches): arguments, printing, exit codes."""
