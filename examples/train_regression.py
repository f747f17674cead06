"""Train one regression model per event and register it in MLflow.

    export MLFLOW_TRACKING_URI=pgmodels://user:password@host:5432/mlflow
    python examples/train_regression.py --source db        # or: --source csv --csv releases.csv

For every event: train on its older releases, test on the newest, log params and metrics in an
MLflow run, register the model as ``<event>_regression`` (a new version each time, tags ``event``
and ``model_type``) and write a row with that version and the directional metrics to the table
``regression_results``. Plain MLflow throughout; the pgmodels store keeps the versions in the
``models`` table.
"""

from __future__ import annotations

import mlflow
import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

import event_data
from event_data import FEATURES, TARGET

MODEL_TYPE = "regression"
PARAMS = {"n_estimators": 150, "max_depth": 2, "learning_rate": 0.05, "subsample": 0.8, "random_state": 0}


def directional_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """How often the predicted direction of the move was right, overall and for up / down calls."""
    went_up, called_up = actual > 0, predicted > 0
    return {
        "directional_accuracy": float(np.mean(went_up == called_up)),
        "up_precision": float(np.mean(went_up[called_up])) if called_up.any() else float("nan"),
        "down_precision": float(np.mean(~went_up[~called_up])) if (~called_up).any() else float("nan"),
    }


def train_event(event: str, known) -> int:
    """Train, log and register the model of one event; returns its new version."""
    train, test = event_data.split(known)
    model = GradientBoostingRegressor(**PARAMS).fit(train[FEATURES], train[TARGET])
    predicted = model.predict(test[FEATURES])
    metrics = {
        "mae": mean_absolute_error(test[TARGET], predicted),
        "rmse": float(np.sqrt(mean_squared_error(test[TARGET], predicted))),
        "r2": r2_score(test[TARGET], predicted),
        **directional_metrics(test[TARGET].to_numpy(), predicted),
    }
    with mlflow.start_run(run_name=f"{event}-{MODEL_TYPE}") as run:
        mlflow.log_params({**PARAMS, "event": event, "n_train": len(train), "n_test": len(test)})
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=f"{event}_{MODEL_TYPE}",
            tags={"event": event, "model_type": MODEL_TYPE},  # become the version's tags (models.event / model_type)
            input_example=train[FEATURES].head(3),
            # pinned to what is installed: skips MLflow's slow requirement inference
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
            # skops (MLflow's safe format) loads tree ensembles only when told to trust their
            # node storage; we trained this model ourselves
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    version = info.registered_model_version
    event_data.save_rows("regression_results", [{
        "event": event, "model_name": f"{event}_{MODEL_TYPE}", "model_version": version,
        "run_id": run.info.run_id, "n_train": len(train), "n_test": len(test), **metrics}])
    print(f"{event}: {event}_{MODEL_TYPE} version {version}  directional accuracy "
          f"{metrics['directional_accuracy']:.0%}  MAE {metrics['mae']:.3f}")
    return version


def main(argv: list[str] | None = None) -> int:
    args = event_data.parse_args(__doc__, argv)
    mlflow.set_experiment(args.experiment)
    for event, known in event_data.training_sets(args):
        train_event(event, known)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
