"""Registry metadata queries at N versions: resolve ``latest``, ``get_latest_versions``, search; no blob reads."""

from __future__ import annotations

from benchmarks import database
from benchmarks.bench import Bench, timed
from benchmarks.models import log_model, tiny_model
from benchmarks.report import Stat

QUERIES = (("latest", 'resolve "models:/meta/latest"', 0.5),
           ("glv", "`get_latest_versions`", 0.5),
           ("search", "`search_model_versions(\"name='meta'\")`", 1.0))


def _time_queries(bench: Bench, n: int) -> dict[str, dict[str, list[float]]]:
    """Samples of each query on each side, with ``n`` versions of ``meta`` in both registries."""
    import mlflow
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    repeats = bench.plan.meta_repeats
    got = {}
    for side in (bench.stock, bench.ours):
        side.activate()
        client = mlflow.MlflowClient()
        assert len(client.search_model_versions("name='meta'")) == n, side.name
        ModelsArtifactRepository("models:/meta/latest")  # warm
        got[side.name] = {
            "latest": [timed(ModelsArtifactRepository, "models:/meta/latest") for _ in range(repeats)],
            "glv": [timed(client.get_latest_versions, "meta") for _ in range(repeats)],
            "search": [timed(client.search_model_versions, "name='meta'") for _ in range(max(3, repeats // 3))],
        }
    return got


def metadata(bench: Bench) -> None:
    """Each query at the plan's two registry sizes against stock, ``latest`` flat, and no TOAST reads."""
    tiny, _ = tiny_model()
    for side in (bench.stock, bench.ours):
        side.activate()
        log_model(tiny, "meta")
    toast_read = 0
    latest_by_size = {}
    for n in bench.plan.versions:
        database.bulk_versions_sqlite(bench.stock_db, "meta", n)
        database.bulk_versions_pg(bench.ours.uri, "meta", n)  # copies blobs: not counted below
        database.evict_toast(bench.pg)
        got = _time_queries(bench, n)
        toast_read += database.toast_blocks_read(bench.pg)
        latest_by_size[n] = got["pgmodels"]["latest"]
        for key, what, goal in QUERIES:
            bench.row(f"{what}, {n:,} versions", Stat(got["pgmodels"][key]),
                      Stat(got["stock"][key], label="stock"), goal)
    small, large = bench.plan.versions
    bench.row(f"resolve latest: {large:,} versions against {small:,} (flat)", Stat(latest_by_size[large]),
              Stat(latest_by_size[small], label=f"{small:,} versions"), 1.2)
    bench.row("TOAST blocks of `model_binary` read by all the metadata queries above",
              Stat([toast_read], unit=""), None, None, note="goal: 0")
