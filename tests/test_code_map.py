"""The package's layers, as ``ls mlflow_pgmodels`` shows them (docs/design.md, "Map of the code").

At the top only what users and MLflow import (entry points, the seed's helper API, ``live``, the
loader MLmodel files name, the command line); below it one private sub-package per layer. A layer
imports only its own modules and the layers below it; read from the source: every ``import`` of a
package module, at the top or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_pgmodels"

# bottom first; "" is the public top level
LAYERS = ["_mlflow", "_settings", "_pg", "_storage", "_events", "_registry", "_cache", "_lifecycle", "",
          "_commands"]
PUBLIC = {"__init__", "helpers", "live", "legacy", "registry_store", "tracking_store", "version_artifact_repo",
          "run_artifact_repo", "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    """The layer of a module (``_pg.db`` → ``_pg``; ``helpers`` → the top level, "").

    ``cli``, the console script, is the commands layer's public face."""
    head = "_commands" if module == "cli" else module.split(".")[0]
    return head if head in LAYERS else ""


def imports() -> dict[str, set[str]]:
    """module (dotted, below the package) -> the package modules it imports."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlflow_pgmodels"):
                base = node.module.removeprefix("mlflow_pgmodels").lstrip(".")
                for alias in node.names:
                    candidate = f"{base}.{alias.name}" if base else alias.name
                    sub = PACKAGE.joinpath(*candidate.split("."))
                    found.add(candidate if sub.with_suffix(".py").exists() or sub.is_dir() else base)
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("mlflow_pgmodels.") for a in node.names
                          if a.name.startswith("mlflow_pgmodels.")}
        name = module_name(path)
        graph[name] = found - {name, ""}
    return graph


def test_the_top_level_holds_only_what_users_and_mlflow_import():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    private = {name for name in top if name.startswith("_") and name != "__init__"}
    assert top - private - {"__pycache__", "sql"} == PUBLIC
    assert private - {"__pycache__"} == {name for name in LAYERS if name}


def test_a_layer_never_imports_a_layer_above_it():
    upward = {module: sorted(t for t in targets if LAYERS.index(layer(t)) > LAYERS.index(layer(module)))
              for module, targets in imports().items()}
    assert {m: t for m, t in upward.items() if t} == {}


def test_the_seam_imports_nothing_of_the_package_but_itself():
    graph = imports()
    assert {m: sorted(t) for m, t in graph.items()
            if layer(m) == "_mlflow" and any(layer(x) != "_mlflow" for x in t)} == {}


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
    offenders = {m: sorted(t) for m, t in imports().items()
                 if layer(m) != "_commands" and any(layer(x) == "_commands" for x in t)}
    assert offenders == {}


def test_the_scan_sees_every_layer():
    graph = imports()
    assert {layer(m) for m in graph} == set(LAYERS)
    assert "_pg.db" in graph["_registry.store"] and "_mlflow" in graph["_registry.store"]
