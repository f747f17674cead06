"""Migrating a directory of file-era .joblib models with `mlflow-pgmodels migrate`."""

import os
import subprocess
import sys

import joblib
import mlflow
import pytest

from mlflow_pgmodels.cli import main
from mlflow_pgmodels._commands.migrate import PATH_TAG, SHA256_TAG, compile_pattern
from tests import sample

PATTERN = "{event}/{name}_{model_type}.joblib"


@pytest.fixture
def model_dir(tmp_path):
    """What the team had on disk: one folder per event, a corrupt file and a file that is no model."""
    root = tmp_path / "models"
    for event in ("cpi", "nfp"):
        (root / event).mkdir(parents=True)
    joblib.dump(sample.regressor(2.0), root / "cpi" / "price_regression.joblib")
    joblib.dump(sample.classifier(1), root / "cpi" / "direction_classifier_binary.joblib")
    joblib.dump(sample.regressor(7.0), root / "nfp" / "price_regression.joblib")
    (root / "nfp" / "direction_classifier_binary.joblib").write_bytes(b"\x80\x04 truncated")
    joblib.dump({"threshold": 0.5}, root / "nfp" / "settings_regression.joblib")
    (root / "README.txt").write_text("models of the event study")
    return root


def _migrate(capsys, *args):
    code = main(["migrate", *map(str, args)])
    return code, capsys.readouterr().out


def test_migrating_twice_imports_each_file_once_and_reports_bad_files(db, model_dir, capsys):
    code, out = _migrate(capsys, model_dir, "--pattern", PATTERN, "--uri", db.uri)

    assert code == 1
    assert "3 imported, 0 skipped (already imported), 2 failed" in out
    assert f"FAILED   {model_dir}/nfp/direction_classifier_binary.joblib" in out
    assert f"FAILED   {model_dir}/nfp/settings_regression.joblib: not a model: it holds a dict" in out
    assert db.sql("SELECT name, version, event, model_type FROM models ORDER BY name, version") == [
        ("direction", 1, "cpi", "classifier_binary"),
        ("price", 1, "cpi", "regression"),
        ("price", 2, "nfp", "regression"),
    ]

    code, out = _migrate(capsys, model_dir, "--pattern", PATTERN, "--uri", db.uri)
    assert code == 1
    assert "0 imported, 3 skipped (already imported), 2 failed" in out
    assert db.sql("SELECT count(*) FROM models") == [(3,)]
    # nothing on disk was touched
    assert sorted(p.name for p in model_dir.rglob("*.joblib")) == [
        "direction_classifier_binary.joblib", "direction_classifier_binary.joblib",
        "price_regression.joblib", "price_regression.joblib", "settings_regression.joblib"]


def test_imported_versions_load_through_mlflow(client, db, model_dir, capsys):
    _migrate(capsys, model_dir, "--pattern", PATTERN, "--uri", db.uri)

    loaded = mlflow.pyfunc.load_model("models:/direction/1")
    assert list(loaded.predict(sample.X[:6])) == list(sample.classifier(1).predict(sample.X[:6]))
    mv = client.get_model_version("price", "2")
    assert mv.tags[PATH_TAG] == "nfp/price_regression.joblib"
    assert len(mv.tags[SHA256_TAG]) == 64
    assert mlflow.sklearn.load_model("models:/price/2").coef_[0] == pytest.approx(7.0)


def test_fixed_or_changed_files_are_imported_on_the_next_run(db, model_dir, capsys):
    _migrate(capsys, model_dir, "--pattern", PATTERN, "--uri", db.uri)
    os.remove(model_dir / "nfp" / "settings_regression.joblib")
    joblib.dump(sample.classifier(2), model_dir / "nfp" / "direction_classifier_binary.joblib")
    joblib.dump(sample.regressor(3.0), model_dir / "cpi" / "price_regression.joblib")  # retrained

    code, out = _migrate(capsys, model_dir, "--pattern", PATTERN, "--uri", db.uri)

    assert code == 0
    assert "2 imported, 2 skipped (already imported), 0 failed" in out
    assert db.sql("SELECT name, version, event FROM models WHERE version > 1 ORDER BY name, version") == [
        ("direction", 2, "nfp"), ("price", 2, "nfp"), ("price", 3, "cpi")]


def test_event_and_model_type_from_options_when_the_pattern_lacks_them(db, tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    joblib.dump(sample.regressor(), tmp_path / "flat" / "price.joblib")
    joblib.dump(sample.regressor(), tmp_path / "flat" / "volume.joblib")

    code, _ = _migrate(capsys, tmp_path / "flat", "--pattern", "{name}.joblib", "--event", "cpi",
                       "--model-type", "regression", "--uri", db.uri)

    assert code == 0
    assert db.sql("SELECT name, event, model_type FROM models ORDER BY name") == [
        ("price", "cpi", "regression"), ("volume", "cpi", "regression")]


def test_dry_run_writes_nothing_not_even_the_schema(empty_db, model_dir):
    result = subprocess.run(
        [sys.executable, "-m", "mlflow_pgmodels.cli", "migrate", str(model_dir), "--pattern", PATTERN, "--dry-run"],
        env={**os.environ, "MLFLOW_TRACKING_URI": empty_db.uri}, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1, result.stderr
    assert "would import cpi/price_regression.joblib -> price (event cpi, model_type regression)" in result.stdout
    assert "3 would be imported, 0 skipped (already imported), 2 failed" in result.stdout
    assert empty_db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


@pytest.mark.parametrize("path, expected", [
    ("cpi/churn_classifier_binary.joblib", ("churn", "cpi", "classifier_binary")),
    ("cpi/price_model_regression.joblib", ("price_model", "cpi", "regression")),
    ("cpi/price_custom.joblib", ("price", "cpi", "custom")),
    ("cpi/sub/price_regression.joblib", None),
])
def test_pattern_splits_names_from_model_types(path, expected):
    match = compile_pattern(PATTERN).match(path) or compile_pattern(PATTERN, known_types=False).match(path)
    assert (match and (match["name"], match["event"], match["model_type"])) == (expected or None)
