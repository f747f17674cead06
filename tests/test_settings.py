"""The ``MLFLOW_PGMODELS_*`` settings: each declared once in ``mlflow_pgmodels/_settings.py``, read
only through its declaration; unset gives the default, a value of another form is refused with
INVALID_PARAMETER_VALUE naming the variable and the form it takes, wherever it is read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_pgmodels import _settings, cli
from mlflow_pgmodels._settings import ALL, Setting
from tests import sample

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_pgmodels"

# values of the wrong form, by the form a setting takes
BAD = {
    _settings.COUNT: ["lots", "0", "-3", "1.5", "1e3", "nan"],
    _settings.BYTES: ["lots", "0", "-1", "10GiB", "1.5"],
    _settings.BYTES_OR_ZERO: ["lots", "-1", "10GiB", "1.5"],
    _settings.SECONDS: ["soon", "0", "-1", "nan", "inf", "5s"],
    _settings.PORT: ["http", "0", "65536", "-1", "5432.0"],
    _settings.FLAG: ["maybe", "2", "enabled", "-"],
    _settings.STORE_URI: ["postgresql://alice:s3cret@db2/mlflow", "db2:5432", "pgmodels:/churn/1"],
    _settings.DURATION: ["30", "d", "30 days", "1.5h", "-1d", "30y"],
}
# values of the right form, and what they read as
GOOD = {
    _settings.COUNT: [("1", 1), ("10_000", 10_000), (" 12 ", 12)],
    _settings.BYTES: [("1", 1), ("3_145_728", 3 * 2**20)],
    _settings.BYTES_OR_ZERO: [("0", 0), ("12345", 12345)],
    _settings.SECONDS: [("0.5", 0.5), ("30", 30.0), ("1_000", 1000.0)],
    _settings.PORT: [("1", 1), ("65535", 65535)],
    _settings.FLAG: [("1", True), ("0", False), ("TRUE", True), ("false", False), ("yes", True), ("no", False),
                     ("on", True), ("Off", False)],
    _settings.STORE_URI: [("pgmodels://mlflow@db2:5432/mlflow", "pgmodels://mlflow@db2:5432/mlflow")],
    _settings.DURATION: [("30d", "30d"), ("12h", "12h"), (" 2w ", "2w"), ("45 s", "45 s")],
    _settings.PATH: [("relative/dir", "relative/dir"), ("/tmp/x y", "/tmp/x y")],
}


def _ids(setting: Setting) -> str:
    return setting.name.removeprefix("MLFLOW_PGMODELS_")


# ---------------------------------------------------------------------- the declarations
def test_every_setting_is_declared_once_with_a_doc():
    names = [s.name for s in ALL]
    assert len(names) == len(set(names)) and all(n.startswith("MLFLOW_PGMODELS_") for n in names)
    module_level = [v for v in vars(_settings).values() if isinstance(v, Setting)]
    assert sorted(s.name for s in module_level) == sorted(names)  # ALL is every declaration
    for setting in ALL:
        assert setting.doc and "\n" not in setting.doc and "|" not in setting.doc  # one table cell
        assert setting.kind in BAD or setting.kind in GOOD, f"{setting.name}: a form this test does not know"


@pytest.mark.parametrize("setting", ALL, ids=_ids)
def test_the_default_applies_when_unset_or_blank(setting, monkeypatch):
    monkeypatch.delenv(setting.name, raising=False)
    assert setting.get() == setting.default
    monkeypatch.setenv(setting.name, "  ")
    assert setting.get() == setting.default


@pytest.mark.parametrize("setting", ALL, ids=_ids)
def test_a_bad_value_is_refused_naming_the_setting_and_its_form(setting, monkeypatch):
    if setting.kind is _settings.PATH:
        # a path has no wrong form: any text is one (the OS refuses what it cannot use, see
        # test_secrets.py::test_cli_prints_one_line_for_any_error)
        assert setting.kind.parse("any text at all") == "any text at all"
        return
    for bad in BAD[setting.kind]:
        monkeypatch.setenv(setting.name, bad)
        with pytest.raises(MlflowException) as e:
            setting.get()
        assert e.value.error_code == "INVALID_PARAMETER_VALUE", bad
        message = e.value.message
        assert message.startswith(setting.name) and f"is not {setting.kind.form}" in message, message
        assert f"(default {setting.shown_default})" in message
        if setting.kind.secret:
            assert bad not in message and "s3cret" not in message
        else:
            assert f"{setting.name}={bad!r}" in message


@pytest.mark.parametrize("setting", ALL, ids=_ids)
def test_a_good_value_is_read_as_its_type(setting, monkeypatch):
    for text, value in GOOD[setting.kind]:
        monkeypatch.setenv(setting.name, text)
        got = setting.get()
        assert got == value and type(got) is type(value), text


def test_the_defaults_are_those_documented():
    # the values users have relied on; a change here is a change of behaviour
    assert {s.name.removeprefix("MLFLOW_PGMODELS_"): s.default for s in ALL} == {
        "POOL_MAX_SIZE": 8, "POOL_TIMEOUT": 30.0, "READ_URI": None, "READ_WAIT": 1.0, "LOCK_TIMEOUT": 5.0,
        "CACHE_DIR": None, "CACHE_MAX_BYTES": 10 * 2**30, "MAX_UNPACKED_BYTES": 10 * 2**30,
        "MAX_ENTRIES": 100_000, "MAX_RATIO": 200, "PROGRESS": True, "WEBHOOK_DISPATCHER": True,
        "WEBHOOK_WORKERS": 4, "WEBHOOK_MAX_ATTEMPTS": 12, "WEBHOOK_BACKOFF": 1.0, "DELIVERY_RETENTION": None,
        "EMBEDDED_PORT": 54329, "DEBUG": False}


# ---------------------------------------------------------------------- read one way
def _our_constants() -> set[str]:
    """Names the package binds to a setting's name (``READ_URI_ENV = _settings.READ_URI.name``)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = node.value
                if (isinstance(value, ast.Constant) and str(value.value).startswith("MLFLOW_PGMODELS_")) or \
                        (isinstance(value, ast.Attribute) and value.attr == "name"
                         and "_settings" in ast.unparse(value)):
                    names.add(node.targets[0].id)
    return names


def _environ_keys(tree: ast.AST) -> list[ast.expr]:
    """The keys of every read of the environment: os.environ[k], os.environ.get(k), os.getenv(k), k in os.environ."""
    keys = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ"):
            keys.append(node.slice)
        elif isinstance(node, ast.Call) and node.args and \
                ast.unparse(node.func).endswith(("environ.get", "getenv", "environ.setdefault", "environ.pop")):
            keys.append(node.args[0])
        elif isinstance(node, ast.Compare) and any(ast.unparse(c).endswith("environ") for c in node.comparators):
            keys.append(node.left)
    return keys


def test_no_module_but_settings_reads_our_settings_from_the_environment():
    ours = _our_constants()
    assert {"READ_URI_ENV", "MAX_RATIO_ENV", "LOCK_TIMEOUT_ENV"} <= ours  # the check sees the constants
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_settings.py":
            continue
        for key in _environ_keys(ast.parse(path.read_text())):
            text = ast.unparse(key)
            if "MLFLOW_PGMODELS_" in text or text.split(".")[-1] in ours or "_settings." in text:
                found.append(f"{path.relative_to(PACKAGE)}:{key.lineno}: {text}")
    assert not found, f"read the environment directly, not through _settings: {found}"


def test_every_declared_setting_is_read_through_its_declaration():
    code = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "_settings.py")
    idents = [ident for ident, v in vars(_settings).items() if isinstance(v, Setting)]
    unread = [ident for ident in idents if f"_settings.{ident}.get()" not in code]
    assert not unread, f"declared, never read: {unread}"


# ---------------------------------------------------------------------- as a user meets it
def test_a_bad_cache_limit_is_refused_when_a_model_is_loaded(client, monkeypatch):
    sample.log(sample.regressor(2.0), "churn")
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES", "lots")

    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model("models:/churn/1")

    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "MLFLOW_PGMODELS_CACHE_MAX_BYTES='lots' is not a whole number of bytes, 0 or more (default 10 GiB)" \
        in e.value.message

    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES", "0")  # 0 is a limit: keep nothing not in use
    assert mlflow.pyfunc.load_model("models:/churn/1").predict(sample.X[:2]).tolist() == \
        pytest.approx(sample.regressor(2.0).predict(sample.X[:2]).tolist())


def test_a_read_uri_that_is_not_a_store_uri_is_refused_without_its_password(db, monkeypatch):
    monkeypatch.setenv("MLFLOW_PGMODELS_READ_URI", "postgresql://alice:s3cret@db2/mlflow")

    with pytest.raises(MlflowException) as e:
        MlflowClient(registry_uri=db.uri).search_registered_models()

    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "MLFLOW_PGMODELS_READ_URI" in e.value.message and "pgmodels://" in e.value.message
    assert "s3cret" not in e.value.message and "alice" not in e.value.message


def test_the_command_line_prints_a_bad_setting_as_one_error_line(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES", "10GB")
    assert cli.main(["cache", "ls"]) != 0
    err = capsys.readouterr().err
    assert err == ("error: MLFLOW_PGMODELS_CACHE_MAX_BYTES='10GB' is not a whole number of bytes, 0 or more "
                   "(default 10 GiB)\n")

    monkeypatch.delenv("MLFLOW_PGMODELS_CACHE_MAX_BYTES")
    monkeypatch.setenv("MLFLOW_PGMODELS_DEBUG", "maybe")  # the switch for tracebacks is checked too
    assert cli.main(["cache", "ls"]) != 0
    assert capsys.readouterr().err.startswith("error: MLFLOW_PGMODELS_DEBUG='maybe' is not on or off")


def test_a_bad_retention_is_refused_naming_it_when_prune_runs(db, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_PGMODELS_DELIVERY_RETENTION", "30 days")
    assert cli.main(["prune", "--deliveries-older-than", "30d", "--uri", db.uri]) == 0  # the option wins
    capsys.readouterr()
    assert cli.main(["prune", "--keep-last", "5", "--uri", db.uri]) != 0
    assert "MLFLOW_PGMODELS_DELIVERY_RETENTION='30 days' is not a whole number and a unit" in capsys.readouterr().err
