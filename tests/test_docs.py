"""README.md and docs/ stay true: links stay inside the repository, every `mlflow-pgmodels` command
shown matches the real CLI's --help, code blocks compile, the settings table is the declarations of _settings.py.

No database needed: one subprocess asks the CLI for the --help of every subcommand.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
SETTING = re.compile(r"MLFLOW_PGMODELS_[A-Z0-9_]*[A-Z0-9]")


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a page: (language, text)."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(page.read_text())]


def _prose(text: str) -> str:
    """``text`` without fenced blocks and code spans (where brackets are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


@cache
def _anchors(page: Path) -> frozenset[str]:
    """GitHub's anchors for the headings of a page."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(found)


def _links(page: Path) -> list[str]:
    text = _prose(page.read_text())
    return LINK.findall(text) + REFERENCE.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_stay_inside_the_repository(page):
    problems = []
    for target in _links(page):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        if re.match(r"[a-z][\w+.-]*:", path) or path.startswith(("/", "~", "\\")):
            problems.append(f"{target}: not a relative path or an http(s) URL")
            continue
        resolved = (page.parent / path).resolve() if path else page
        try:
            inside = resolved.relative_to(ROOT).as_posix()
        except ValueError:
            problems.append(f"{target}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{target}: {inside} does not exist")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            problems.append(f"{target}: no heading of {inside} has the anchor #{anchor}")
    assert problems == [], f"{_rel(page)}: {problems}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_path_named_outside_the_repository(page):
    """Also paths in code spans and blocks: readers of the repository have nothing beside it
    (``../x`` must be a file of the repository, seen from the page or from the top)."""
    outside = []
    for path in re.findall(r"(?<![\w.])(?:\.\./)+[\w.-][\w./-]*", page.read_text()):
        if not any(_inside(base / path) and (base / path).exists() for base in (page.parent, ROOT)):
            outside.append(path)
    assert outside == [], f"{_rel(page)} names paths outside the repository: {outside}"


def _inside(path: Path) -> bool:
    try:
        path.resolve().relative_to(ROOT)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------ the CLI
_HELP_WALK = r"""
import contextlib, io, json, re
from mlflow_pgmodels import cli

def help_of(path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main([*path, "--help"])
    return out.getvalue()

helps = {}
def walk(path):
    text = helps[" ".join(path)] = help_of(path)
    for group in re.findall(r"\{([^}]+)\}", text.split("\n\n")[0]):
        for choice in group.split(","):
            sub = [*path, choice]
            if help_of(sub).startswith("usage: mlflow-pgmodels " + " ".join(sub) + " "):
                walk(sub)
walk([])
print(json.dumps(helps))
"""


@cache
def _cli_help() -> dict[str, str]:
    """The real --help of every subcommand, keyed by its path ('' for the top, 'webhooks run' …)."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-c", _HELP_WALK], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# `mlflow-pgmodels` as a command (not `pip install mlflow-pgmodels`, not a path ending in it)
COMMAND = re.compile(r"(?<![\w/.$-])mlflow-pgmodels((?:[ \t]+[^\s#`|;&][^\s`|;&]*)+)")


def _commands() -> list[tuple[str, str]]:
    """(page, argument text) of every `mlflow-pgmodels …` shown in a code block or code span."""
    found = []
    for page in PAGES:
        text = page.read_text()
        pieces = [block for _, block in _blocks(page)]
        pieces += [m.group(2) for m in CODE_SPAN.finditer(FENCE.sub("", text))]
        for piece in pieces:
            for line in piece.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line)  # a shell comment
                for m in COMMAND.finditer(line):
                    if re.search(r"\b(install|uninstall|show)\s+$", line[:m.start()]):
                        continue
                    found.append((_rel(page), m.group(1).strip()))
    return found


def _tokens(arguments: str) -> list[str]:
    try:
        tokens = shlex.split(arguments)
    except ValueError:
        tokens = arguments.split()
    return [t.strip("[]") for t in tokens]


def test_the_docs_show_commands_at_all():
    shown = {arguments.split()[0] for _, arguments in _commands()}
    assert {"db", "migrate", "import-registry", "history", "webhooks", "cache", "embedded"} <= shown


@pytest.mark.parametrize("page, arguments", _commands(), ids=lambda v: v if "/" not in v and "." not in v else None)
def test_every_command_shown_matches_its_help(page, arguments):
    helps = _cli_help()
    tokens = _tokens(arguments)
    path: list[str] = []
    for token in tokens:
        if token.startswith("-") or " ".join([*path, token]) not in helps:
            break
        path.append(token)
    assert path or tokens[0].startswith("-"), \
        f"{page}: `mlflow-pgmodels {arguments}`: {tokens[0]!r} is not a subcommand " \
        f"(--help lists: {helps[''].split(chr(10))[0]})"
    help_text = helps[" ".join(path)]
    rest = tokens[len(path):]
    options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", help_text))
    for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(rest)):
        assert flag in options, f"{page}: `mlflow-pgmodels {arguments}`: {flag} is not an option of " \
                                f"`mlflow-pgmodels {' '.join(path)}` ({sorted(options)})"
    # a fixed choice (`db init`, `cache ls`, `four-eyes NAME on`) must be one of its choices: the
    # usage line's {a,b} groups, at the position the usage line gives them among the positionals
    usage = help_text.split("\n\n")[0]
    without_options = re.sub(r"\[-[^\]]*\]|-{1,2}[\w-]+(\s+[A-Z_]+)?", " ",
                             " ".join(usage.split())[len(" ".join(["usage: mlflow-pgmodels", *path])):])
    positionals = re.findall(r"\{[^}]+\}|[\w.]+", without_options.replace("...", " "))
    given = [token for token in rest if not token.startswith("-")]
    for slot, token in zip(positionals, given):
        if slot.startswith("{") and re.fullmatch(r"[a-z][a-z-]*", token):
            assert token in slot[1:-1].split(","), \
                f"{page}: `mlflow-pgmodels {arguments}`: {token!r} is not one of {slot}"


def test_the_cli_module_runs_as_documented():
    done = subprocess.run([sys.executable, "-m", "mlflow_pgmodels.cli", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage:")
    assert set(_cli_help()) >= {"", "db", "migrate", "webhooks", "webhooks run"}


# ------------------------------------------------------------------------- code blocks
def _code(languages: tuple[str, ...]) -> list[tuple[str, int, str]]:
    return [(_rel(page), i, text) for page in PAGES
            for i, (language, text) in enumerate(_blocks(page)) if language in languages]


@pytest.mark.parametrize("page, index, source", _code(("python", "py")),
                         ids=lambda v: str(v) if isinstance(v, (int, str)) and "\n" not in str(v) else None)
def test_python_blocks_compile(page, index, source):
    compile(source, f"{page} python block {index}", "exec")
    # Python expands no shell variables: a password must not look as if it would be filled in
    assert "${" not in source, f"{page} python block {index}: ${{...}} is not expanded in a Python string"


def test_shell_blocks_parse():
    blocks = _code(("bash", "sh", "shell"))
    assert blocks
    for page, index, source in blocks:
        done = subprocess.run(["bash", "-n"], input=source, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{page} bash block {index}: {done.stderr}"


def test_the_first_commands_are_the_quickstart_and_the_ci_test_command():
    # .ci/run's pytest line (after it, the compat pass on the oldest supported MLflow)
    ci_test = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
               if re.match(r"python3? -m pytest\b", line.strip())][0]
    first = _blocks(README)[0][1]
    assert "python examples/quickstart.py" in first
    assert ci_test in first, f"README's first block does not show .ci/run's test command {ci_test!r}"


# ---------------------------------------------------------------------------- settings
def _declared() -> list[str]:
    from mlflow_pgmodels import _settings

    return [setting.name for setting in _settings.ALL]


def _read_by_the_code() -> set[str]:
    return {name for path in (ROOT / "mlflow_pgmodels").rglob("*.py") for name in SETTING.findall(path.read_text())}


def test_the_settings_table_is_the_declarations():
    """README's table is ``_settings.markdown_table()``: every declared setting, in declaration
    order, with its default and doc; nothing else."""
    from mlflow_pgmodels import _settings

    text = README.read_text()
    section = text[text.index("\n## Settings"):]
    section = section[:section.find("\n## ", 1) if "\n## " in section[1:] else None]
    table = [row for row in section.splitlines() if row.startswith("|")]
    expected = _settings.markdown_table().splitlines()
    assert [row.split(" | ")[0] for row in expected[2:]] == [f"| `{name}`" for name in _declared()]
    assert table == expected, (
        "README's settings table is not the declarations of mlflow_pgmodels/_settings.py; replace it with "
        "the output of `python -m mlflow_pgmodels._settings`. Differing rows: "
        f"{sorted(set(table) ^ set(expected))}")


def test_the_code_names_only_declared_settings():
    declared, code = set(_declared()), _read_by_the_code()
    assert code == declared, f"named by the code, not declared: {sorted(code - declared)}; " \
                             f"declared, never named: {sorted(declared - code)}"


def test_every_setting_the_docs_name_exists():
    declared = set(_declared())
    for page in PAGES:
        unknown = set(SETTING.findall(page.read_text())) - declared
        assert not unknown, f"{_rel(page)} names settings _settings.py does not declare: {sorted(unknown)}"


def test_the_versions_the_docs_state_are_pyproject_s():
    pyproject = (ROOT / "pyproject.toml").read_text()
    mlflow_floor = re.search(r'"mlflow>=([\d.]+)', pyproject).group(1)
    python_floor = re.search(r'requires-python\s*=\s*">=([\d.]+)"', pyproject).group(1)
    for page in (README, ROOT / "docs" / "production.md"):
        text = page.read_text()
        assert f"MLflow ≥ {mlflow_floor}" in text or f"≥ {mlflow_floor}, < " in text, \
            f"{_rel(page)} does not state pyproject.toml's MLflow floor {mlflow_floor}"
        assert f"Python ≥ {python_floor}" in text or f"| Python | ≥ {python_floor}" in text, \
            f"{_rel(page)} does not state pyproject.toml's Python floor {python_floor}"


PACKAGE_FILE = re.compile(r"(?<![\w/.-])((?:mlflow_pgmodels/)?(?:_[a-z]+/)?[a-z_]+\.py|(?:mlflow_pgmodels/)?_[a-z]+/)(?![\w/])")
OTHER_PY = {"conftest.py", "setup.py", "test_sqlalchemy_store.py"}  # the last is MLflow's own


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_module_the_docs_name_exists(page):
    """A module named in code spans (`_pg/schema.py`, `helpers.py`, `_mlflow/`; in the map's layer
    rows relative to their layer) is a file of the package, a test, a benchmark or an example:
    moving or renaming a module means updating the docs that point at it."""
    places = [ROOT / "mlflow_pgmodels", ROOT / "tests", ROOT / "benchmarks", ROOT / "examples", ROOT / "docs", ROOT]
    missing = set()
    for span in CODE_SPAN.finditer(page.read_text()):
        for name in PACKAGE_FILE.findall(span.group(2)):
            relative = name.removeprefix("mlflow_pgmodels/")
            in_a_layer = any((ROOT / "mlflow_pgmodels").glob(f"_*/{relative}"))
            if name not in OTHER_PY and not in_a_layer and not any((place / relative).exists() for place in places):
                missing.add(name)
    assert missing == set()


def test_the_map_in_design_md_names_every_module():
    """docs/design.md's map lists each module of the package under its layer (or at the top)."""
    text = (ROOT / "docs" / "design.md").read_text()
    map_ = text[text.index("## 0. Map of the code"):text.index("## 1. The schema")]
    rows = {}
    for line in map_.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            layer = cells[0].strip("`") if cells[0].strip("`").endswith("/") else ""
            named = set(re.findall(r"`([\w.]+\.py)`", cells[1] if layer else cells[0]))
            rows.setdefault(layer, set()).update(named)
    package = ROOT / "mlflow_pgmodels"
    expected = {}
    for path in package.rglob("*.py"):
        if path.name == "__init__.py" and path.parent != package:
            continue
        layer = "" if path.parent == package else f"{path.parent.name}/"
        expected.setdefault(layer, set()).add(path.name)
    assert rows == expected
