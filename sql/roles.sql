-- Database roles for the model store. Run as the owner of the tables (or a superuser), after the
-- schema exists (mlflow-pgmodels db init, or psql -f sql/create-tables.sql). Idempotent: run it
-- again after schema upgrades.
--   psql -d your_database -f sql/roles.sql
--
-- pgmodels_reader: serving / predict jobs. Reads versions, runs and experiments; every write
--                  (registry or tracking) fails with PERMISSION_DENIED and changes nothing.
-- pgmodels_writer: training jobs and `mlflow server`. Registers versions, changes stages, tags,
--                  aliases and descriptions, logs runs. No DDL: schema changes stay with the owner.
-- Both are group roles (NOLOGIN): grant them to login roles, e.g.
--   CREATE ROLE predict_job LOGIN PASSWORD '...' IN ROLE pgmodels_reader;
--   CREATE ROLE train_job   LOGIN PASSWORD '...' IN ROLE pgmodels_writer;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgmodels_reader') THEN
        CREATE ROLE pgmodels_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgmodels_writer') THEN
        CREATE ROLE pgmodels_writer NOLOGIN;
    END IF;
END $$;

-- CONNECT is PUBLIC's by default; granted explicitly for databases that revoked it (needs the
-- database's owner: a table owner who is not gets a notice instead of an error).
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgmodels_reader, pgmodels_writer', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'CONNECT on this database not granted (not its owner); PUBLIC has it unless revoked';
END $$;
GRANT USAGE ON SCHEMA public TO pgmodels_reader, pgmodels_writer;

-- Readers: every table (MLflow's too, so runs and experiments show), no writes.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO pgmodels_reader;

-- Writers: read and write rows.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pgmodels_writer;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO pgmodels_writer;

-- The same rights on tables the role running this script creates later (MLflow migrations,
-- pgmodels schema upgrades).
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO pgmodels_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO pgmodels_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO pgmodels_writer;

-- Governance roles (release manager, owner) and the rights on the rule tables: a file of its own.
\ir governance_roles.sql
