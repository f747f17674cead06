"""MLflow's internals are reached only through ``mlflow_pgmodels/_mlflow/`` (the seam).

Read from the source, as tests/test_code_map.py reads the import graph: outside the seam no module
imports a private MLflow name, follows an ``mlflow.…._private`` attribute path, imports MLflow's
server handlers, or names one of the environment variables ``mlflow server`` sets for itself.
And the seam's error for a missing internal says what a person needs to act on it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from mlflow_pgmodels import _mlflow

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_pgmodels"
SEAM = PACKAGE / "_mlflow"


def _is_mlflow(module: str) -> bool:
    return module == "mlflow" or module.startswith("mlflow.")


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def offences(source: str) -> list[str]:
    """What ``source`` reaches of MLflow's internals (empty: public API only)."""
    found = []
    tree = ast.parse(source)
    mlflow_names: set[str] = set()  # local names bound to MLflow modules or objects
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and _is_mlflow(node.module):
            mlflow_names |= {a.asname or a.name for a in node.names}
            if any(_private(p) for p in node.module.split(".")) or node.module.startswith("mlflow.server.handlers"):
                found.append(f"line {node.lineno}: from {node.module} import …")
            found += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names
                      if _private(a.name) or (node.module == "mlflow.server" and a.name == "handlers")]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _is_mlflow(a.name):
                    mlflow_names.add(a.asname or a.name.split(".")[0])
                    if any(_private(p) for p in a.name.split(".")) or a.name.startswith("mlflow.server.handlers"):
                        found.append(f"line {node.lineno}: import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in mlflow_names:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_MLFLOW_"):
            found.append(f"line {node.lineno}: MLflow's own environment variable {node.value}")
        if isinstance(node, ast.Attribute) and node.attr in ("_hard_delete_experiment", "deliver_webhook"):
            found.append(f"line {node.lineno}: replaces MLflow's {node.attr}")
    return found


def test_no_module_but_the_seam_reaches_mlflow_internals():
    offenders = {str(path.relative_to(PACKAGE)): offences(path.read_text())
                 for path in sorted(PACKAGE.rglob("*.py")) if SEAM not in path.parents}
    assert len(offenders) > 40  # every module of every layer was read
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize("source", [
    "from mlflow.utils.validation import _validate_model_name",
    "from mlflow.server import handlers",
    "import mlflow.server.handlers as h",
    "import mlflow\nmlflow.store.artifact.utils.models._parse_model_uri('models:/a/1')",
    "from mlflow.tracking.context import default_context\ndefault_context._get_user()",
    "import os\nos.environ.get('_MLFLOW_SERVER_ARTIFACT_ROOT')",
    "def f(store):\n    store._hard_delete_experiment = print",
])
def test_the_scan_sees_each_kind_of_internal(source):
    assert offences(source)


def test_the_scan_lets_public_api_and_the_seam_through():
    assert offences("import mlflow\nfrom mlflow.exceptions import MlflowException\n"
                    "from mlflow_pgmodels._mlflow import validate_model_name\n"
                    "from mlflow_pgmodels import _mlflow\n_mlflow.require()\nmlflow.pyfunc.load_model\n") == []


def test_a_missing_internal_names_the_version_what_is_missing_and_what_to_do():
    with _mlflow.probing():
        stand_in = _mlflow.resolve("mlflow.utils.validation", "_validate_name_no_mlflow_has")
        with pytest.raises(_mlflow.IncompatibleMlflow) as raised:
            stand_in("x")
        message = raised.value.message
        assert mlflow.__version__ in message
        assert "mlflow.utils.validation._validate_name_no_mlflow_has is missing" in message
        low, high = _mlflow.TESTED_RANGE
        assert f'pip install "mlflow>={low},' in message and "upgrade mlflow-pgmodels" in message
        assert raised.value.error_code == "INVALID_STATE"
        assert isinstance(raised.value, ImportError)  # an `import` of the package fails with it too
        with pytest.raises(_mlflow.IncompatibleMlflow, match="_validate_name_no_mlflow_has"):
            _mlflow.require()
    assert "_validate_name_no_mlflow_has" not in " ".join(_mlflow.problems())  # the probe kept nothing


def test_a_changed_signature_is_refused_too():
    with _mlflow.probing():
        _mlflow.resolve("mlflow.utils.validation", "_validate_model_name", params=("name", "extra", "more"))
        assert "no longer takes the arguments (name, extra, more)" in _mlflow.problems()[-1]


def test_a_missing_module_is_named():
    with _mlflow.probing():
        _mlflow.resolve("mlflow.no_such_module_in_any_release", "thing")
        assert _mlflow.problems()[-1] == "module mlflow.no_such_module_in_any_release is missing (wanted thing)"


def test_an_optional_feature_of_a_newer_mlflow_is_feature_disabled():
    stand_in = _mlflow.resolve("mlflow.utils.validation", "_validate_no_such_feature", feature="Time travel",
                               since="9.1")
    assert not stand_in
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"Time travel .* need MLflow 9\.1 or newer") as raised:
        stand_in()
    assert raised.value.error_code == "FEATURE_DISABLED"
    assert mlflow.__version__ in raised.value.message


def test_this_mlflow_fits_the_seam():
    assert _mlflow.problems() == []
    assert _mlflow.tested(), f"MLflow {mlflow.__version__} is outside TESTED_RANGE {_mlflow.TESTED_RANGE}"


def test_the_floor_in_pyproject_is_the_tested_range():
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    low, high = _mlflow.TESTED_RANGE
    assert f'"mlflow>={low},<4"' in pyproject


def test_an_unusable_mlflow_is_an_error_when_the_store_is_built_not_a_silent_unregistered_scheme(tmp_path):
    """MLflow's plugin loader turns an entry point's ImportError into a warning and then calls the
    scheme unsupported: the seam lets the store's module import and the store refuse to be built."""
    script = (
        "import mlflow\n"
        "from mlflow_pgmodels import _mlflow\n"
        "_mlflow.resolve('mlflow.utils.validation', '_validate_gone_in_this_mlflow')\n"
        "from mlflow import MlflowClient\n"
        "try:\n"
        "    MlflowClient(registry_uri='pgmodels://nobody@127.0.0.1:1/none').search_registered_models()\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e.error_code, e.message)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("IncompatibleMlflow INVALID_STATE mlflow-pgmodels cannot work with MLflow"), done.stdout
    assert "_validate_gone_in_this_mlflow is missing" in done.stdout
    assert "Failure attempting to register store" not in done.stderr
    assert "_validate_gone_in_this_mlflow is missing" in done.stderr  # logged at ERROR as well
