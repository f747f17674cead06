"""A password in the store URI stays secret: not in sources, URIs, tags, rows, files, logs or errors.

The role connects over TCP with a password that needs URL quoting; both the raw and the quoted
form are searched for, everywhere a user (or an attacker reading logs) could look.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import traceback
import urllib.parse
import zipfile

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from psycopg import sql

from mlflow_pgmodels._pg.embedded import free_port
from mlflow_pgmodels.registry_store import PgModelsRegistryStore
from tests import sample

PASSWORD = "Zq9@x/y:%w#Secret-7Qx"
SECRETS = (PASSWORD, urllib.parse.quote(PASSWORD, safe=""), "Secret-7Qx")


def _assert_clean(text: str | bytes, where: str) -> None:
    for secret in SECRETS:
        found = secret.encode() in text if isinstance(text, bytes) else secret in text
        assert not found, f"the password shows in {where}"


@pytest.fixture
def login(db) -> tuple[str, str]:
    """(user, pgmodels:// URI over TCP) of a writer login role whose password is PASSWORD."""
    user, _ = db.login_role("pgmodels_writer")
    db.sql(f"ALTER ROLE {user} PASSWORD '{PASSWORD.replace('%', '%%')}'")
    return user, db.tcp_uri(user, PASSWORD)


@pytest.fixture
def log_records():
    """Every log record of every logger, at DEBUG (MLflow's, psycopg's and SQLAlchemy's included)."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    loggers += [logging.getLogger(n) for n in ("mlflow", "psycopg", "sqlalchemy", "alembic", "mlflow_pgmodels")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
    yield records
    for lg, level in saved:
        lg.setLevel(level)
        lg.removeHandler(handler)


def _text_columns(db) -> list[tuple[str, str]]:
    return db.sql("SELECT table_name, column_name FROM information_schema.columns"
                  " WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'character')")


def test_password_is_in_no_source_uri_tag_row_file_or_log(db, login, log_records, tmp_path):
    user, uri = login
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    info = sample.log(sample.regressor(2.0), "churn", serialization_format="cloudpickle")
    client.set_model_version_tag("churn", "1", "reviewed", "yes")
    mlflow.pyfunc.load_model("models:/churn/latest")

    mv = client.get_model_version("churn", "1")
    run = client.get_run(mv.run_id)
    shown = {
        "the version's source": mv.source,
        "the download URI": client.get_model_version_download_uri("churn", "1"),
        "the version's tags": repr(mv.tags),
        "the registered model": repr(client.get_registered_model("churn")),
        "search results": repr(client.search_model_versions("name = 'churn'")),
        "the run's tags and params": repr(run.data.tags) + repr(run.data.params),
        "the run's artifact URI": run.info.artifact_uri,
        "the model info": repr(info.__dict__),
        "the store's repr": repr(PgModelsRegistryStore(uri)),
    }
    for where, text in shown.items():
        _assert_clean(text, where)
    for table, column in _text_columns(db):
        hits = db.sql(sql.SQL("SELECT count(*) FROM {} WHERE {}::text LIKE %s").format(
            sql.Identifier(table), sql.Identifier(column)), ("%Secret-7Qx%",))
        assert hits == [(0,)], f"the password is stored in {table}.{column}"
    with zipfile.ZipFile(io.BytesIO(db.sql("SELECT model_binary FROM models")[0][0])) as zf:
        for name in zf.namelist():
            _assert_clean(zf.read(name), f"{name} in model_binary")
    for root, _, files in os.walk(tmp_path):  # mlruns/, the cache, everything MLflow wrote
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                _assert_clean(fh.read(), os.path.join(root, f))
    assert log_records, "no log records were captured"
    _assert_clean("\n".join(log_records), "the logs")


def _bad_uris(db, user: str) -> dict[str, str]:
    good = urllib.parse.urlsplit(db.tcp_uri(user, PASSWORD))
    netloc = good.netloc
    return {
        "wrong password": good._replace(netloc=netloc.replace("Secret-7Qx", "Secret-7Qx-not")).geturl(),
        "wrong port": good._replace(netloc=netloc.rsplit(":", 1)[0] + f":{free_port()}").geturl(),
        "wrong host": good._replace(netloc=netloc.replace("127.0.0.1", "host.invalid")).geturl(),
        "wrong database": good._replace(path="/no_such_db").geturl(),
    }


@pytest.mark.parametrize("case", ["wrong password", "wrong port", "wrong host", "wrong database"])
def test_failed_connections_do_not_show_the_password(db, login, log_records, case):
    uri = _bad_uris(db, login[0])[case]
    attempts = {
        "registry": lambda: MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri=uri).get_registered_model("m"),
        "tracking": lambda: MlflowClient(tracking_uri=uri).search_experiments(),
        "load": lambda: (mlflow.set_tracking_uri(uri), mlflow.pyfunc.load_model("models:/m/1")),
    }
    for what, attempt in attempts.items():
        with pytest.raises(MlflowException) as e:
            attempt()
        # docs/design.md §6: database unreachable / connection failed
        assert e.value.error_code == "TEMPORARILY_UNAVAILABLE", (what, e.value.error_code, e.value.message)
        _assert_clean("".join(traceback.format_exception(e.value)) + repr(e.value), f"the {what} error ({case})")
        mlflow.set_tracking_uri(None)
    _assert_clean("\n".join(log_records), f"the logs ({case})")


def test_cli_output_never_shows_the_password(db, login):
    good, bad = login[1], list(_bad_uris(db, login[0]).values())
    done = subprocess.run(["mlflow-pgmodels", "db", "init", "--uri", good], capture_output=True, text=True, timeout=120)
    _assert_clean(done.stdout + done.stderr, "the output of db init")
    # every failing URI, through the command's entry point in one process (one MLflow import)
    script = ("import sys; sys.argv[0] = 'mlflow-pgmodels'  # as the console script runs\n"
              "from mlflow_pgmodels.cli import main\n"
              "codes = [main(['db', 'init', '--uri', u]) for u in sys.argv[1:]]\n"
              "print(codes)")
    done = subprocess.run([sys.executable, "-c", script, *bad], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == str([2] * len(bad)), done.stderr
    assert done.stderr.count("error: ") == len(bad) and "Traceback" not in done.stderr, done.stderr
    _assert_clean(done.stdout + done.stderr, "the output of db init with failing URIs")
    # the same through the environment instead of --uri
    done = subprocess.run(["mlflow-pgmodels", "db", "upgrade", "--registry-only"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": bad[0]})
    assert done.returncode == 2
    _assert_clean(done.stdout + done.stderr, "the output with MLFLOW_TRACKING_URI")


MARK = "Secret-7Qx"
# malformed URIs of a login whose password has specials; what the error must say each time
MALFORMED = {
    "bad percent-encoding": (f"pgmodels://u:s3cr%zz{MARK}@127.0.0.1/db", "'%' is not followed by two hexadecimal"),
    "password with an unquoted /": (f"pgmodels://u:ab/{MARK}@127.0.0.1/db", "Percent-encode"),
    "password with an unquoted @": (f"pgmodels://u:ab@{MARK}@127.0.0.1/db", "Percent-encode"),
    "port out of range": (f"pgmodels://u:{urllib.parse.quote(PASSWORD, safe='')}@127.0.0.1:99999/db", "99999"),
    "port not a number": (f"pgmodels://u:%25{MARK}@127.0.0.1:5x/db", "'5x' is not a number"),
    "unknown parameter": (f"pgmodels://u:%25{MARK}@127.0.0.1/db?sslmod=require", '"sslmod"'),
    "bad parameter value": (f"pgmodels://u:%25{MARK}@127.0.0.1/db?sslmode=requir", "sslmode='requir'"),
    "more ports than hosts": (f"pgmodels://u:%25{MARK}@h1,h2/db?port=5432,5433,5434", "3 ports for 2 hosts"),
    "unclosed IPv6 bracket": (f"pgmodels://u:%25{MARK}@[::1/db", "IPv6"),
    "password parameter": (f"pgmodels://u@127.0.0.1/db?password=%zz{MARK}", "'%' is not followed"),
}


def _assert_refused(attempt, says: str, where: str) -> None:
    # MLflow's client parses the URI with urllib first, which refuses an unclosed "[" by itself
    with pytest.raises((MlflowException, ValueError) if "client" in where else MlflowException) as e:
        attempt()
    if isinstance(e.value, MlflowException):
        assert e.value.error_code == "INVALID_PARAMETER_VALUE", (where, e.value.error_code, e.value.message)
        assert says in e.value.message, (where, e.value.message)
    text = "".join(traceback.format_exception(e.value)) + repr(e.value)
    assert MARK not in text and "s3cr" not in text, f"the password shows in the {where} error: {text}"
    _assert_clean(text, f"the {where} error")


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_uris_are_refused_without_the_password(case, log_records):
    from mlflow_pgmodels import load_model_from_db, save_model_to_db
    from mlflow_pgmodels.version_artifact_repo import VersionArtifactRepository
    from mlflow_pgmodels._pg.uri import to_sqlalchemy_url

    uri, says = MALFORMED[case]
    attempts = {
        "store": lambda: PgModelsRegistryStore(uri),
        "artifact repository": lambda: VersionArtifactRepository(
            "pgmodels:/m/1", registry_uri=uri).download_artifacts("", dst_path="out"),
        "load helper": lambda: load_model_from_db("m", "e", "regression", uri=uri),
        "save helper": lambda: save_model_to_db(sample.regressor(1.0), "m", "e", "regression", uri=uri),
        "tracking URL": lambda: to_sqlalchemy_url(uri),
        "tracking client": lambda: (mlflow.set_tracking_uri(uri), MlflowClient().search_experiments()),
        "registry client": lambda: MlflowClient(tracking_uri="http://127.0.0.1:9",
                                                registry_uri=uri).get_registered_model("m"),
    }
    for where, attempt in attempts.items():
        _assert_refused(attempt, says, where)
        mlflow.set_tracking_uri(None)
    logs = "\n".join(log_records)
    assert MARK not in logs and "s3cr" not in logs
    _assert_clean(logs, "the logs")


def test_cli_prints_one_line_for_a_malformed_uri():
    uri = "pgmodels://u:s3cr%zzt@h/db"  # the URI of the report
    done = subprocess.run(["mlflow-pgmodels", "db", "init", "--uri", uri], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stdout == "" and done.stderr.count("\n") == 1 and done.stderr.startswith("error: Invalid pgmodels URI")
    assert "s3cr" not in done.stderr and "zzt" not in done.stderr
    # every other malformed URI, through the command's entry point in one process (one MLflow import)
    script = ("import sys; sys.argv[0] = 'mlflow-pgmodels'  # as the console script runs\n"
              "from mlflow_pgmodels.cli import main\n"
              "codes = [main(['db', 'init', '--uri', u]) for u in sys.argv[1:]]\n"
              "print(codes)")
    uris = [uri for uri, _ in MALFORMED.values()]
    done = subprocess.run([sys.executable, "-c", script, *uris], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == str([2] * len(uris)), done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == len(uris) and all(line.startswith("error: Invalid pgmodels URI") for line in lines), lines
    assert MARK not in done.stderr and "s3cr" not in done.stderr
    _assert_clean(done.stderr, "the output of db init with malformed URIs")


def test_cli_prints_one_line_for_any_error(tmp_path):
    """Not only MlflowExceptions: an unexpected error (here the OS's) is one line too, no traceback."""
    (tmp_path / "file").write_text("not a directory")
    env = {**os.environ, "MLFLOW_PGMODELS_CACHE_DIR": str(tmp_path / "file" / "cache")}
    done = subprocess.run(["mlflow-pgmodels", "cache", "ls"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Not a directory" in done.stderr
