"""MLflow's tracking schema: the tables our SQL reads, and MLflow's Alembic migrations."""

from __future__ import annotations

from mlflow_pgmodels._mlflow._core import require, resolve

# What the package's SQL reads of MLflow's own schema (created and migrated by MLflow's Alembic).
EXPERIMENTS_TABLE = "experiments"  # columns experiment_id, artifact_location
ALEMBIC_VERSION_TABLE = "alembic_version"  # MLflow's Alembic revision (column version_num)



def _migration_scripts():
    from alembic.script import ScriptDirectory

    config = resolve("mlflow.store.db.utils", "_get_alembic_config", params=("db_url",))
    require()
    return ScriptDirectory.from_config(config(""))


def mlflow_schema_head() -> str:
    """The Alembic revision of the installed MLflow's newest tracking schema."""
    return _migration_scripts().get_current_head()


def mlflow_migrations(since: str | None) -> list[tuple[str, str]]:
    """(revision, description) of the installed MLflow's migrations after ``since`` (None: all), oldest
    first; LookupError when ``since`` is no revision the installed MLflow knows (a newer MLflow's)."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    scripts = _migration_scripts()
    try:
        steps = list(scripts.iterate_revisions(scripts.get_current_head(), since))
    except (CommandError, RevisionError) as e:
        raise LookupError(since) from e
    return [(s.revision, (s.doc or "").strip().splitlines()[0] if s.doc else "") for s in reversed(steps)]


def upgrade_mlflow_schema(sqlalchemy_url: str) -> None:
    """Run the installed MLflow's migrations on the database (what ``mlflow db upgrade`` does)."""
    import sqlalchemy

    upgrade = resolve("mlflow.store.db.utils", "_upgrade_db", params=("engine",))
    require()
    engine = sqlalchemy.create_engine(sqlalchemy_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
