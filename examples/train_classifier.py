"""Train one up/down classifier per event and register it in MLflow.

    export MLFLOW_TRACKING_URI=pgmodels://user:password@host:5432/mlflow
    python examples/train_classifier.py --source db        # or: --source csv --csv releases.csv

For every event: learn whether the price goes up after a release from its older releases, test on
the newest, log params and metrics in an MLflow run, register the model as ``<event>_classifier``
(tags ``event`` and ``model_type=classifier_binary``) and write a row with that version to the
table ``classifier_results``.
"""

from __future__ import annotations

import mlflow
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import event_data
from event_data import FEATURES, TARGET

MODEL_TYPE = "classifier_binary"
PARAMS = {"C": 1.0, "class_weight": "balanced"}


def train_event(event: str, known) -> int:
    """Train, log and register the classifier of one event; returns its new version."""
    train, test = event_data.split(known)
    # 1.0 = up, 0.0 = down (as in predictions.prediction); floats, so that MLflow infers a float
    # output schema (an integer one warns that it cannot hold missing values)
    went_up_train, went_up_test = (train[TARGET] > 0).astype(float), (test[TARGET] > 0).astype(float)
    model = make_pipeline(StandardScaler(), LogisticRegression(**PARAMS)).fit(train[FEATURES], went_up_train)
    called_up = model.predict(test[FEATURES])
    metrics = {
        "accuracy": accuracy_score(went_up_test, called_up),
        "precision_up": precision_score(went_up_test, called_up, zero_division=0),
        "recall_up": recall_score(went_up_test, called_up, zero_division=0),
        "f1": f1_score(went_up_test, called_up, zero_division=0),
    }
    if went_up_test.nunique() == 2:  # AUC needs both outcomes in the test set
        metrics["roc_auc"] = roc_auc_score(went_up_test, model.predict_proba(test[FEATURES])[:, 1])
    name = f"{event}_classifier"
    with mlflow.start_run(run_name=f"{event}-{MODEL_TYPE}") as run:
        mlflow.log_params({**PARAMS, "event": event, "n_train": len(train), "n_test": len(test)})
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=name,
            tags={"event": event, "model_type": MODEL_TYPE},
            input_example=train[FEATURES].head(3),
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
        )
    version = info.registered_model_version
    event_data.save_rows("classifier_results", [{
        "event": event, "model_name": name, "model_version": version, "run_id": run.info.run_id,
        "n_train": len(train), "n_test": len(test), **metrics}])
    print(f"{event}: {name} version {version}  accuracy {metrics['accuracy']:.0%}  "
          f"precision(up) {metrics['precision_up']:.0%}")
    return version


def main(argv: list[str] | None = None) -> int:
    args = event_data.parse_args(__doc__, argv)
    mlflow.set_experiment(args.experiment)
    for event, known in event_data.training_sets(args):
        train_event(event, known)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
