"""A predict service that follows the model a URI means now, without restarting.

    export MLFLOW_TRACKING_URI=pgmodels://user:password@host:5432/mlflow
    python examples/serve_live.py --event cpi                                  # models:/cpi_regression/latest
    python examples/serve_live.py --model "models:/cpi_regression@champion"    # an alias, or .../Production

It holds a ``LiveModel``: when what the URI means changes — an alias moved in the UI, a new
version registered, a version archived with a plain ``UPDATE models SET is_active = false`` —
the new version is loaded in the background and swapped in within about a second of the commit.
A version that fails to load is logged and the old one keeps serving. Each "request" here is
the newest release of the event still to predict, every --every seconds; each answer names the
version that gave it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time

import event_data
from event_data import FEATURES, TARGET

from mlflow_pgmodels.live import LiveModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--event", default="cpi", choices=list(event_data.EVENTS))
    parser.add_argument("--model", help="the model URI to serve (default: models:/<event>_regression/latest)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between requests")
    parser.add_argument("--requests", type=int, default=0, help="stop after this many (default: run until Ctrl-C)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # swaps and failed loads are logged

    data = event_data.load("db", [args.event], "", 240)
    release = data[data[TARGET].isna()].tail(1)[FEATURES]
    with LiveModel(args.model or f"models:/{args.event}_regression/latest") as live:
        print(f"serving {live.model_uri}: version {live.version}", flush=True)
        for n in itertools.count(1):
            model, version = live.current()  # this request's model, whatever swaps meanwhile
            print(f"request {n}: {model.predict(release)[0]:+.3f} from version {version}", flush=True)
            if n == args.requests:
                return 0
            time.sleep(args.every)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(0)
