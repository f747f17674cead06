"""Predict the price move after each new release with the latest active model of its event.

    export MLFLOW_TRACKING_URI=pgmodels://user:password@host:5432/mlflow
    python examples/predict.py --source db

For every event with new releases (no price change yet) and each kind of model, load
``models:/<event>_regression/latest`` and ``models:/<event>_classifier/latest`` — the highest
version that is not archived — predict, and store the predictions with the model version used in
the table ``predictions``. An event without a model is reported and the other events still run
(the exit code is then 1).
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import event_data
from event_data import FEATURES, TARGET

# model_type: the registered model name of an event
MODELS = {"regression": "{event}_regression", "classifier_binary": "{event}_classifier"}


def main(argv: list[str] | None = None) -> int:
    args = event_data.parse_args(__doc__, argv)
    data = event_data.load(args.source, args.events, args.csv, args.rows)
    new = data[data[TARGET].isna()]
    client = MlflowClient()
    missing = []
    for event in args.events:
        releases = new[new["event"] == event]
        if releases.empty:
            print(f"{event}: no new releases to predict")
            continue
        for model_type, pattern in MODELS.items():
            name = pattern.format(event=event)
            try:
                # what models:/<name>/latest resolves to, pinned so that the version stored is the one used
                version = client.get_model_version_by_alias(name, "latest").version
            except MlflowException as e:
                print(f"{event}: no {model_type} model to predict with: {e.message}. "
                      f"Train one (examples/train_*.py) or activate a version of '{name}'.")
                missing.append(name)
                continue
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            predictions = model.predict(releases[FEATURES])
            event_data.save_rows("predictions", [
                {"event": event, "released_at": released_at, "model_name": name, "model_version": int(version),
                 "model_type": model_type, "prediction": float(prediction)}
                for released_at, prediction in zip(releases["released_at"], predictions)])
            print(f"{event}: {len(releases)} predictions with {name} version {version}: "
                  + ", ".join(f"{p:+.2f}" if model_type == "regression" else ("up" if p else "down")
                              for p in predictions))
    if missing:
        print(f"No model for: {', '.join(missing)}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
