"""The compat pass on every MLflow minor from the floor to the newest: ``python -m tests.compat_matrix``.

For each minor (its latest patch on the package index) it builds or reuses a venv under
``/tmp/pgm-compat``, installs this project with that MLflow (a normal resolve, else MLflow's wheels
with ``--no-deps`` over the resolved set, as when the index lacks a matching ``mlflow-tracing``),
runs tests/test_compat_smoke.py and, when ``../shared/peer-suite`` exists, MLflow's own registry
tests against the store. Prints a table (and writes it to ``--out`` as markdown).

    python -m tests.compat_matrix                      # floor … newest
    python -m tests.compat_matrix --versions 3.10,3.18 --no-peer
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_SUITE = ROOT.parent / "shared" / "peer-suite" / "run.sh"
VENVS = Path("/tmp/pgm-compat")


def floor() -> str:
    """The oldest MLflow minor pyproject.toml allows (``mlflow>=X.Y``)."""
    match = re.search(r'"mlflow>=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text())
    return match.group(1)


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def latest_patches(low: str) -> list[str]:
    """The latest patch of every MLflow minor from ``low`` to the newest on the package index."""
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "mlflow"],
                         capture_output=True, text=True, check=True).stdout
    listed = re.search(r"Available versions: (.*)", out).group(1).split(", ")
    releases = [v for v in listed if re.fullmatch(r"\d+\.\d+\.\d+", v)]
    newest: dict[tuple[int, int], str] = {}
    for v in releases:
        minor = _release(v)[:2]
        if minor >= _release(low)[:2] and minor[0] == _release(low)[0] and (
                minor not in newest or _release(v) > _release(newest[minor])):
            newest[minor] = v
    return [newest[m] for m in sorted(newest)]


def _pip(venv: Path, *args: str, log: Path) -> bool:
    with open(log, "a") as f:
        return subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *args],
                              stdout=f, stderr=subprocess.STDOUT).returncode == 0


def install(version: str) -> tuple[Path, str]:
    """A venv with this project and MLflow ``version``; (venv, route: "normal" / "--no-deps" / failure)."""
    venv = VENVS / f"venv-{version}"
    route_file = VENVS / f"venv-{version}.route"
    log = VENVS / f"venv-{version}.log"
    if route_file.exists() and (venv / "bin" / "python").exists():
        _pip(venv, "--no-deps", "-e", str(ROOT), log=log)  # this checkout's code, the venv's packages
        return venv, route_file.read_text().split()[-1]
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if _pip(venv, "-e", f"{ROOT}[test]", f"mlflow=={version}", log=log):
        route = "normal"
    elif _pip(venv, "-e", f"{ROOT}[test]", log=log) and _pip(
            venv, "--no-deps", f"mlflow=={version}", f"mlflow-skinny=={version}", log=log):
        route = "--no-deps"
    else:
        return venv, "install failed"
    route_file.write_text(f"{version} {route}\n")
    return venv, route


def _summary(output: str) -> str:
    """pytest's counts from its closing line ("2 passed", "1 failed, 1 passed" …)."""
    counts = re.findall(r"(\d+) (passed|failed|errors?|skipped)", output.strip().splitlines()[-1] if output.strip() else "")
    return ", ".join(f"{n} {what}" for n, what in counts) or "no result"


def smoke(venv: Path) -> str:
    """tests/test_compat_smoke.py's counts; its output in ``<venv>.smoke.log``."""
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "tests/test_compat_smoke.py", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    Path(f"{venv}.smoke.log").write_text(done.stdout + done.stderr)
    return _summary(done.stdout)


def peer_suite(version: str) -> str:
    if not PEER_SUITE.exists():
        return "skipped (no ../shared/peer-suite)"
    done = subprocess.run(["bash", str(PEER_SUITE), str(ROOT)], capture_output=True, text=True,
                          env={**_env(), "PEER_MLFLOW": version})
    line = next((l for l in reversed(done.stdout.splitlines()) if l.startswith("peer-suite:")), "no result")
    return line.removeprefix("peer-suite: ").split(" (")[0]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", help="comma-separated minors or releases (default: floor … newest)")
    parser.add_argument("--no-peer", action="store_true", help="skip MLflow's registry tests (peer suite)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    versions = latest_patches(floor())
    if args.versions:
        wanted = args.versions.split(",")
        versions = [v for v in versions if any(v == w or v.startswith(w + ".") for w in wanted)]
    header = "| MLflow | install route | smoke (tests/test_compat_smoke.py) | peer suite (MLflow's registry tests) | minutes |"
    rows = [header, "|---|---|---|---|---|"]
    print(header, flush=True)
    failed = False
    totals = {"passed": 0, "failed": 0}
    for version in versions:
        started = time.monotonic()
        venv, route = install(version)
        if route == "install failed":
            result = (route, "-", "-")
        else:
            result = (route, smoke(venv), "not run (--no-peer)" if args.no_peer else peer_suite(version))
        failed |= "failed" in result[1] or "error" in result[1] or route == "install failed"
        for n, what in re.findall(r"(\d+) (passed|failed|error)", result[1]):
            totals["failed" if what == "error" else what] += int(n)
        row = f"| {version} | {' | '.join(result)} | {(time.monotonic() - started) / 60:.1f} |"
        rows.append(row)
        print(row, flush=True)
        if args.out:
            args.out.write_text("\n".join(rows) + "\n")
    print(f"compat: {totals['passed']} passed, {totals['failed']} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
