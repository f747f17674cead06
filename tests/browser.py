"""The MLflow UI in headless Chromium (Debian's ``chromium``), driven by Playwright.

Shared by tests/test_ui.py and docs/make_screenshots.py: the browser, the demo registry both
show, and the screenshots of the three registry pages.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Root needs --no-sandbox; the rest keeps the browser off the network and its first-run screens.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Dismissed up front: the registry's promo dialog and the assistant side panel cover the pages.
_QUIET_UI = """
localStorage.setItem('_mlflow_model_registry_promo_modal_dismissed_v1', 'true');
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
"""
VIEWPORT = {"width": 1280, "height": 1000}
CHURN_COLUMNS = ["tenure", "monthly_charges", "support_calls"]


@contextlib.contextmanager
def chromium() -> Iterator:
    """A Playwright browser context on a fresh profile of the system Chromium."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="pgmodels-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport=VIEWPORT)
            context.add_init_script(_QUIET_UI)
            context.set_default_timeout(30_000)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def seed_registry(server_url: str) -> None:
    """The demo registry, through the server: price-forecast (v2 archived), churn (3 versions,
    a schema on v3, alias champion, a description, a tag) and fraud-detector."""
    import mlflow
    import pandas as pd

    from tests import sample

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server_url)
    try:
        client = mlflow.MlflowClient()
        sample.log(sample.regressor(2.0), "price-forecast")
        sample.log(sample.regressor(3.0), "price-forecast")
        client.transition_model_version_stage("price-forecast", "2", "Archived")

        frame = pd.DataFrame(sample.X, columns=CHURN_COLUMNS)
        sample.log(sample.classifier(1), "churn")
        sample.log(sample.classifier(2), "churn")
        sample.log(sample.classifier(3).fit(frame, sample.Y_CLASS), "churn", input_example=frame[:3])
        client.update_registered_model("churn", "Which customers cancel next month. Retrained weekly.")
        client.set_registered_model_tag("churn", "team", "retention")
        client.set_registered_model_alias("churn", "champion", "3")
        client.update_model_version("churn", "3", "Logistic regression on three account features.")

        sample.log(sample.classifier(4), "fraud-detector")
    finally:
        mlflow.set_tracking_uri(previous)


def open_page(context, url: str, ready_text: str):
    """A new tab on ``url`` (an MLflow UI route), once ``ready_text`` shows."""
    page = context.new_page()
    page.goto(url)
    page.get_by_text(ready_text, exact=True).first.wait_for()
    return page


def screenshots(server_url: str, out_dir: Path, context=None) -> list[Path]:
    """docs/ui-models.png, ui-model.png, ui-version.png of the demo registry into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with contextlib.nullcontext(context) if context is not None else chromium() as context:
        for filename, route, ready in [
            ("ui-models.png", "/#/models", "fraud-detector"),
            ("ui-model.png", "/#/models/churn", "Version 3"),
            ("ui-version.png", "/#/models/churn/versions/3", "Inputs (3)"),
        ]:
            page = open_page(context, server_url + route, ready)
            if filename == "ui-version.png":
                page.get_by_text("Inputs (3)").click()  # show the schema's columns
                page.get_by_text(CHURN_COLUMNS[-1]).first.wait_for()
            page.wait_for_timeout(1000)  # let the layout settle (the UI keeps polling: no network idle)
            shots.append(out_dir / filename)
            page.screenshot(path=str(shots[-1]))
            page.close()
    return shots
