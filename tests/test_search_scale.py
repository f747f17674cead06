"""Version tag searches on the index that serves them at scale (benchmarks/scale.py measures the speed)."""

from __future__ import annotations

import secrets

import pytest

from tests import sample


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return sample.saved(tmp_path_factory.mktemp("src") / "model")


def test_a_version_tag_as_long_as_mlflow_allows_is_kept_and_found_by_its_value(client, model_dir):
    long_value = secrets.token_hex(50_000)  # 100,000 characters (MLflow's limit), not compressible
    client.create_registered_model("notes")
    for _ in range(3):
        client.create_model_version("notes", model_dir)
    client.set_model_version_tag("notes", "2", "note", long_value)
    client.set_model_version_tag("notes", "3", "note", "short")

    found = client.search_model_versions(f"tags.note = '{long_value}'")

    assert [(mv.name, int(mv.version)) for mv in found] == [("notes", 2)]
    assert found[0].tags["note"] == long_value
    assert [int(mv.version) for mv in client.search_model_versions("tags.note = 'short'")] == [3]
