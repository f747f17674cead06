"""The package's import arrows run one way (docs/design.md, "Map of the code").

Commands → the seed's helper API and MLflow's entry points → the shared parts → ``uri``. Read
from the source: every ``import`` of a package module, at the top or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_pgmodels"
COMMANDS = {"cli", "migrate", "import_registry", "webhooks_command", "governance_command"}


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlflow_pgmodels"):
                if node.module == "mlflow_pgmodels":
                    found |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()}
                else:
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mlflow_pgmodels.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_there_are_no_import_circles():
    graph = imports()
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                circles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [module])
    assert circles == []


def test_library_code_never_imports_the_command_line():
    graph = imports()
    offenders = {m: sorted(targets & {"cli"}) for m, targets in graph.items() if m not in COMMANDS and "cli" in targets}
    assert offenders == {}


def test_uri_is_the_bottom():
    assert imports()["uri"] == set()
