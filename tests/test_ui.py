"""The MLflow UI on versions stored in ``models``, in a real headless Chromium.

One ``mlflow server --backend-store-uri pgmodels://...`` and one browser for the module; the
demo registry (tests/browser.py) is registered through the server. What the pages show is
compared with the database, and edits made on the pages are read back from it.
"""

from __future__ import annotations

import os

import pytest

from tests.browser import CHROMIUM, CHURN_COLUMNS, chromium, open_page, screenshots, seed_registry
from tests.conftest import make_database
from tests.mlflow_server import mlflow_server

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

expect.set_options(timeout=20_000)  # a loaded CI machine can take a while to re-render

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def registry(pg, tmp_path_factory):
    """(database, server) with the demo registry."""
    database = make_database(pg)
    try:
        with mlflow_server(tmp_path_factory.mktemp("ui-server"), database.uri) as server:
            seed_registry(server.url)
            yield database, server
        assert server.failures() == [], server.log()[-5000:]
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")


@pytest.fixture(scope="module")
def browser():
    with chromium() as context:
        yield context


def _expect_names(page, names: list[str]) -> None:
    """Wait until the models table lists exactly ``names``, in this order."""
    rows = page.get_by_role("row").filter(has=page.get_by_role("cell"))
    expect(rows).to_have_count(len(names))
    for row, name in zip(rows.all(), names):
        expect(row.get_by_role("cell").first).to_have_text(name)


def test_models_list_shows_names_and_latest_versions_from_the_database(registry, browser):
    db, server = registry
    latest = dict(db.sql("SELECT name, max(version) FROM models WHERE is_active GROUP BY name"))
    page = open_page(browser, server.url + "/#/models", "fraud-detector")

    _expect_names(page, sorted(latest))
    for row in page.get_by_role("row").filter(has=page.get_by_role("cell")).all():
        name = row.get_by_role("cell").first.inner_text().strip()
        expect(row).to_contain_text(f"Version {latest[name]}")  # price-forecast: v1, v2 is archived
    churn = page.get_by_role("row").filter(has_text="churn")
    expect(churn).to_contain_text("champion")  # aliases column
    expect(churn).to_contain_text("team")      # tags column


def test_models_list_search_and_sorting(registry, browser):
    db, server = registry
    page = open_page(browser, server.url + "/#/models", "fraud-detector")

    page.get_by_role("columnheader", name="Name").click()
    _expect_names(page, [n for (n,) in db.sql("SELECT name FROM pgm_registered_models ORDER BY name DESC")])
    page.get_by_role("columnheader", name="Last modified").click()
    _expect_names(page, [n for (n,) in db.sql("SELECT name FROM pgm_registered_models ORDER BY last_updated_at")])
    page.get_by_role("columnheader", name="Last modified").click()
    _expect_names(page, [n for (n,) in db.sql(
        "SELECT name FROM pgm_registered_models ORDER BY last_updated_at DESC")])

    page.get_by_test_id("model-search-input").fill("fraud")
    page.keyboard.press("Enter")
    _expect_names(page, ["fraud-detector"])


def test_registered_model_page_lists_its_versions(registry, browser):
    db, server = registry
    page = open_page(browser, server.url + "/#/models/churn", "Version 3")

    for (version,) in db.sql("SELECT version FROM models WHERE name = 'churn'"):
        expect(page.get_by_role("link", name=f"Version {version}", exact=True)).to_be_visible()
    (description,) = db.sql("SELECT description FROM pgm_registered_models WHERE name = 'churn'")[0]
    expect(page.get_by_text(description)).to_be_visible()


def test_version_page_shows_schema_and_source_run(registry, browser):
    db, server = registry
    page = open_page(browser, server.url + "/#/models/churn/versions/3", "Inputs (3)")

    page.get_by_text("Inputs (3)").click()  # the schema is read from the MLmodel in model_binary
    for column in CHURN_COLUMNS:
        expect(page.get_by_role("cell", name=f"{column} (required)")).to_be_visible()
    run_id, run_name = db.sql("SELECT m.run_id, r.name FROM models m JOIN runs r ON r.run_uuid = m.run_id"
                              " WHERE m.name = 'churn' AND m.version = 3")[0]
    link = page.get_by_role("link", name=run_name)
    expect(link).to_have_attribute("href", f"#/experiments/0/runs/{run_id}")


def test_alias_set_on_the_version_page_is_in_the_database(registry, browser):
    db, server = registry
    page = open_page(browser, server.url + "/#/models/churn/versions/2", "Version 2")

    page.get_by_test_id("descriptions-item").filter(has_text="Aliases").get_by_role("button", name="Add").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox").fill("challenger")
    page.keyboard.press("Enter")
    dialog.get_by_role("button", name="Save aliases").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("descriptions-item").filter(has_text="Aliases")).to_contain_text("challenger")

    assert db.sql("SELECT version FROM pgm_aliases WHERE name = 'churn' AND alias = 'challenger'") == [(2,)]


def test_description_and_tag_edited_on_the_version_page_are_in_the_database(registry, browser):
    db, server = registry
    page = open_page(browser, server.url + "/#/models/churn/versions/2", "Version 2")

    page.get_by_test_id("descriptionEditButton").click()
    page.get_by_test_id("text-area").fill("Retrained on the March data")
    page.get_by_test_id("editable-note-save-button").click()
    expect(page.get_by_text("Retrained on the March data")).to_be_visible()
    # the tag "event" is the models.event column
    page.get_by_role("row").filter(has_text="event").get_by_test_id("editable-table-button-edit").click()
    page.get_by_test_id("editable-table-edited-input").fill("black-friday")
    page.get_by_test_id("editable-table-button-save").click()
    expect(page.get_by_role("row").filter(has_text="event")).to_contain_text("black-friday")

    assert db.sql("SELECT description, event FROM models WHERE name = 'churn' AND version = 2") == [
        ("Retrained on the March data", "black-friday")]


def test_version_deleted_on_its_page_leaves_the_database(registry, browser):
    db, server = registry
    page = open_page(browser, server.url + "/#/models/price-forecast/versions/2", "Version 2")

    page.get_by_test_id("overflow-menu-trigger").click()
    page.get_by_role("menuitem", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.wait_for_url("**/#/models/price-forecast")

    assert db.sql("SELECT version FROM models WHERE name = 'price-forecast'") == [(1,)]


def test_screenshots_of_the_three_pages(registry, browser, tmp_path):
    _, server = registry
    shots = screenshots(server.url, tmp_path, browser)
    assert [p.name for p in shots] == ["ui-models.png", "ui-model.png", "ui-version.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in shots)


def test_run_artifacts_tab_previews_a_text_file_from_the_database(registry, browser):
    import mlflow

    db, server = registry
    mlflow.set_tracking_uri(db.uri)  # logged straight into the database, shown by the server
    with mlflow.start_run() as run:
        mlflow.log_text("threshold: 0.42\nfeatures: tenure, support_calls", "reports/summary.txt")
    assert db.sql("SELECT count(*) FROM pgm_artifacts WHERE path LIKE %s", (f"%{run.info.run_id}%",)) == [(1,)]

    page = open_page(browser, f"{server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts",
                     "reports")
    page.get_by_text("reports", exact=True).first.click()
    page.get_by_text("summary.txt", exact=True).first.click()
    expect(page.get_by_text("threshold: 0.42").first).to_be_visible()
