-- Database roles for the model store. Run as the owner of the tables (or a superuser), after the
-- schema exists (mlflow-pgmodels db init, or psql -f sql/create-tables.sql). Idempotent: run it
-- again after schema upgrades (MLflow's and ours), so that new tables get their rights.
--   psql -d your_database -f sql/roles.sql
--
-- pgmodels_reader: serving / predict jobs. Reads what loading a model needs (versions, registered
--                  models, runs, LoggedModels, files in the database) and nothing else: no webhook
--                  URLs or secrets, no MLflow secrets. Every write fails with PERMISSION_DENIED.
-- pgmodels_writer: training jobs and `mlflow server`. Registers versions, changes stages, tags,
--                  aliases and descriptions, logs runs, manages webhooks. No DDL: schema changes
--                  stay with the owner. History is written by the database, never by a role.
-- Both are group roles (NOLOGIN): grant them to login roles, e.g.
--   CREATE ROLE predict_job LOGIN PASSWORD '...' IN ROLE pgmodels_reader;
--   CREATE ROLE train_job   LOGIN PASSWORD '...' IN ROLE pgmodels_writer;
-- This script states the groups' whole rights in the schema: it takes from pgmodels_reader any
-- right on a table not in its list below. Grant your own tables to your login roles (or to a
-- group of your own), not to these groups. docs/roles.md has the table of who reads what.

-- ------------------------------------------------------------------ the groups, and connecting
SELECT format('CREATE ROLE %I NOLOGIN', r) FROM unnest(ARRAY['pgmodels_reader', 'pgmodels_writer']) r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec

-- CONNECT is PUBLIC's by default; granted explicitly for databases that revoked it (needs the
-- database's owner: a table owner who is not gets a notice instead of an error).
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgmodels_reader, pgmodels_writer', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'CONNECT on this database not granted (not its owner); PUBLIC has it unless revoked';
END $$;
GRANT USAGE ON SCHEMA public TO pgmodels_reader, pgmodels_writer;

-- ------------------------------------------------------------------ pgmodels_reader
-- SELECT on exactly the tables a predict job reads: models:/name/N and @alias (the registry),
-- runs:/ and models:/m-<id> (MLflow's runs and LoggedModels, their files in the database), and
-- the change history (LiveModel, `mlflow-pgmodels history`). Tables missing from a database
-- (e.g. MLflow's when tracking is elsewhere) are skipped.
DO $$
DECLARE
    readable CONSTANT TEXT[] := ARRAY[
        -- pgmodels: the registry, files in the database, history, schema version
        'models', 'pgm_registered_models', 'pgm_registered_model_tags', 'pgm_model_version_tags',
        'pgm_aliases', 'pgm_version_files', 'pgm_artifacts', 'pgm_blobs', 'pgm_blob_pieces',
        'pgm_history', 'pgm_schema_info',
        -- MLflow's tracking tables behind get_run, get_experiment and get_logged_model
        'alembic_version', 'experiments', 'experiment_tags', 'runs', 'tags', 'params', 'metrics',
        'latest_metrics', 'datasets', 'inputs', 'input_tags', 'logged_models', 'logged_model_tags',
        'logged_model_params', 'logged_model_metrics'];
    t TEXT;
BEGIN
    -- what an earlier roles.sql granted (every table) and this list leaves out
    FOR t IN SELECT c.oid::regclass::text FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND c.relname <> ALL (readable)
               AND has_table_privilege('pgmodels_reader', c.oid, 'SELECT, INSERT, UPDATE, DELETE') LOOP
        EXECUTE format('REVOKE ALL ON %s FROM pgmodels_reader', t);
    END LOOP;
    FOR t IN SELECT c.oid::regclass::text FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY (readable) LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM pgmodels_reader', t);
        EXECUTE format('GRANT SELECT ON %s TO pgmodels_reader', t);
    END LOOP;
END $$;
-- Earlier versions gave the reader SELECT on every table created later too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM pgmodels_reader;

-- ------------------------------------------------------------------ pgmodels_writer
-- Read and write rows of every table; the history is written by the database's triggers only.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pgmodels_writer;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO pgmodels_writer;
DO $$
BEGIN
    IF to_regclass('public.pgm_history') IS NOT NULL THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.pgm_history FROM pgmodels_writer;
    END IF;
END $$;
-- The same rights on tables the role running this script creates later (MLflow migrations,
-- pgmodels schema upgrades).
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO pgmodels_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO pgmodels_writer;

-- Governance roles (release manager, owner) and the rights on the rule tables: a file of its own.
\ir governance_roles.sql
