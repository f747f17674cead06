-- Database roles for the model store. Run as a superuser or the owner of the tables, after the
-- schema exists (mlflow-pgmodels db init, or psql -f sql/create-tables.sql). Idempotent.
--   psql -d your_database -f sql/roles.sql
--   then: ALTER ROLE pgmodels_reader_login ...  (see below)
--
-- pgmodels_reader: serving / predict jobs. Reads versions, cannot change anything.
-- pgmodels_writer: training jobs. Registers versions, changes stages, tags and aliases.
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

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgmodels_reader, pgmodels_writer', current_database());
END $$;
GRANT USAGE ON SCHEMA public TO pgmodels_reader, pgmodels_writer;

-- Readers: every table (MLflow's too, so runs and experiments show), no writes.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO pgmodels_reader;

-- Writers: read and write rows (no DDL: schema changes stay with the owner).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pgmodels_writer;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO pgmodels_writer;
