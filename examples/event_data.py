"""The examples' data: economic releases ("events") and how a price moved after each.

Each row is one release of an event (consumer prices, payrolls, a rate decision): what was
expected (consensus), the previous value, what came out (actual), the volatility before the
release and the price change in the hour after it (%). Rows without a price change are releases
still to be predicted. The data lives in the table ``event_observations`` of the model database
(created and filled with realistic sample data on first use) or in a CSV file.

Results and predictions go to the tables of ``sql/create-tables.sql`` in the same database, the
one MLflow's registry uses: ``mlflow.get_registry_uri()``, a ``pgmodels://`` URI.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

# event: (typical value, typical surprise, price reaction to a one-surprise beat)
EVENTS = {
    "cpi": (3.0, 0.15, -0.9),                 # hotter inflation: prices fall
    "nonfarm_payrolls": (180.0, 60.0, 0.6),   # more jobs: prices rise
    "fomc_rate": (4.5, 0.12, -1.1),           # a higher rate than expected: prices fall
}
FEATURES = ["consensus", "previous", "actual", "surprise", "pre_volatility"]
TARGET = "price_change"
NEW_RELEASES = 4  # per event: the newest releases, whose price change is not known yet
COLUMNS = ["event", "released_at", "consensus", "previous", "actual", "pre_volatility", TARGET]


def parse_args(doc: str, argv: list[str] | None = None):
    """The command line every example shares (``doc``: the example's docstring)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["db", "csv"], default="db",
                        help="read releases from the database table event_observations or from --csv")
    parser.add_argument("--csv", default="event_observations.csv", help="the CSV file for --source csv (written if missing)")
    parser.add_argument("--events", nargs="+", default=list(EVENTS), help="the events (default: all)")
    parser.add_argument("--rows", type=int, default=240, help="releases per event in generated sample data")
    parser.add_argument("--experiment", default="event-models", help="the MLflow experiment of the runs")
    return parser.parse_args(argv)


def sample(event: str, rows: int) -> pd.DataFrame:
    """``rows`` monthly releases of ``event``, the newest :data:`NEW_RELEASES` without a price change."""
    level, spread, reaction = EVENTS[event]
    rng = np.random.default_rng(sum(map(ord, event)))  # the same data on every run
    consensus = level + np.cumsum(rng.normal(0, spread / 2, rows))
    surprise = rng.normal(0, spread, rows)
    actual = consensus + surprise
    previous = np.concatenate([[consensus[0]], actual[:-1]])
    volatility = rng.lognormal(np.log(0.8), 0.3, rows)
    change = reaction * surprise / spread * volatility * 0.5 + rng.normal(0, 0.35, rows) * volatility
    change[-NEW_RELEASES:] = np.nan
    start = datetime(2026, 11, 1, 13, 30, tzinfo=timezone.utc) - timedelta(days=30 * rows)
    return pd.DataFrame({
        "event": event,
        "released_at": [start + timedelta(days=30 * i) for i in range(rows)],
        "consensus": consensus.round(3), "previous": previous.round(3), "actual": actual.round(3),
        "pre_volatility": volatility.round(3), TARGET: change.round(4),
    })


def with_features(data: pd.DataFrame) -> pd.DataFrame:
    return data.assign(surprise=data["actual"] - data["consensus"]).sort_values(["event", "released_at"])


def load(source: str, events: list[str], csv_path: str, rows: int) -> pd.DataFrame:
    """Every release of ``events`` (known and still to predict), generating sample data if there is none."""
    if source == "csv":
        if not os.path.exists(csv_path):
            pd.concat([sample(e, rows) for e in events]).to_csv(csv_path, index=False)
            print(f"Wrote sample data for {', '.join(events)} to {csv_path}")
        data = pd.read_csv(csv_path, parse_dates=["released_at"])
        return with_features(data[data["event"].isin(events)])
    with connect() as conn:
        for event in events:
            if conn.execute("SELECT 1 FROM event_observations WHERE event = %s LIMIT 1", (event,)).fetchone() is None:
                frame = sample(event, rows).astype(object).where(lambda f: f.notna(), None)
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO event_observations ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
                        " ON CONFLICT (event, released_at) DO NOTHING",
                        frame[COLUMNS].itertuples(index=False, name=None))
                print(f"Filled event_observations with {rows} sample releases of {event}")
        cur = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM event_observations WHERE event = ANY(%s)", (events,))
        data = pd.DataFrame(cur.fetchall(), columns=COLUMNS)
    return with_features(data.astype({c: float for c in FEATURES if c != "surprise"} | {TARGET: float}))


def training_sets(args):
    """(event, releases with a known price change) for each event of ``args`` that has enough of them."""
    data = load(args.source, args.events, args.csv, args.rows)
    for event in args.events:
        known = data[(data["event"] == event) & data[TARGET].notna()]
        if len(known) < 10:
            print(f"{event}: only {len(known)} releases with a known price change; not trained")
            continue
        yield event, known


def split(known: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Older releases to train on, the newest to test on (no peeking into the future)."""
    cut = int(len(known) * (1 - test_share))
    return known.iloc[:cut], known.iloc[cut:]


def connect():
    """A connection to the model database (``mlflow.get_registry_uri()``), with the examples' tables."""
    import mlflow
    import psycopg

    from mlflow_pgmodels._pg.uri import is_pgmodels_uri, to_conninfo

    uri = mlflow.get_registry_uri()
    if not is_pgmodels_uri(uri):
        raise SystemExit("Set MLFLOW_TRACKING_URI (or MLFLOW_REGISTRY_URI) to the model database, "
                         "pgmodels://user:password@host:5432/dbname, or run examples/quickstart.py")
    conn = psycopg.connect(to_conninfo(uri), autocommit=True)
    if uri not in _ready:
        _create_tables(conn)
        _ready.add(uri)
    return conn


_ready: set[str] = set()


def _create_tables(conn) -> None:
    """The examples' part of sql/create-tables.sql (the store creates the models tables itself)."""
    from mlflow_pgmodels._pg.schema import sql_dir

    text = (sql_dir() / "create-tables.sql").read_text()
    ddl = "\n".join(line for line in text.splitlines() if not line.startswith("\\ir "))
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('mlflow-pgmodels examples'))")  # one process at a time
        conn.execute(ddl)


def save_rows(table: str, rows: list[dict]) -> None:
    """Insert rows (dicts with the same keys) into ``table`` of the model database."""
    columns = list(rows[0])
    with connect() as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                        [[_plain(row[c]) for c in columns] for row in rows])


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
