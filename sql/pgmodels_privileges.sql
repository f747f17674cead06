-- Who may call the store's functions, and what no reader may see. Idempotent; run after the
-- other pgmodels_*.sql files (sql/create-tables.sql and the package do).
--   psql -d your_database -f sql/pgmodels_privileges.sql
--
-- The pgm_* functions serve the store's triggers and one another: only their owner calls them.
-- Those that write history run as the owner only inside a trigger, so a history row (and the
-- webhook it fans out to) is only ever written by the change it records. PostgreSQL grants
-- EXECUTE on a new function to PUBLIC, and ALTER DEFAULT PRIVILEGES may grant it to others:
-- both are revoked here, from every role but the owner. Four stay open to all, running with the
-- caller's rights: pgm_model_history(name) (reading it needs SELECT on pgm_history),
-- pgm_orphan_blob_count() / pgm_sweep_orphan_blobs() (mlflow gc as the writer role; deleting
-- blobs needs DELETE on pgm_blobs), and pgm_lock_artifact_path(path) (an artifact writer's
-- advisory locks, taken by the writer itself and by the path check it triggers).
DO $$
DECLARE
    f REGPROCEDURE;
    grantee TEXT;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'pgm\_%'
               AND p.proname NOT IN ('pgm_model_history', 'pgm_orphan_blob_count', 'pgm_sweep_orphan_blobs',
                                   'pgm_lock_artifact_path') LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);  -- ROUTINE: procedures too
        FOR grantee IN SELECT DISTINCT a.grantee::regrole::text
                       FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a
                       WHERE p.oid = f AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
            EXECUTE format('REVOKE ALL ON ROUTINE %s FROM %s', f, grantee);
        END LOOP;
    END LOOP;
END $$;

-- Webhook URLs (often credentials themselves), their encrypted secrets and the deliveries are
-- for the owner and writers (mlflow server, the dispatcher) only. Versions before 5 let
-- sql/roles.sql grant pgmodels_reader every table: an upgrade takes these back at once; re-run
-- sql/roles.sql to narrow the reader to what it needs (docs/roles.md).
-- The reader's pgmodels tables (the list sql/roles.sql gives it) are granted again by every
-- upgrade, so that a table an upgrade creates (a seed-era database upgraded after sql/roles.sql
-- ran, or a table a later schema version adds) is readable by predict jobs without re-running
-- roles.sql.
DO $$
DECLARE
    hidden CONSTANT TEXT[] := ARRAY['pgm_webhooks', 'pgm_webhook_events', 'pgm_webhook_deliveries',
                                    'webhooks', 'webhook_events', 'secrets'];
    readable CONSTANT TEXT[] := ARRAY['models', 'pgm_registered_models', 'pgm_registered_model_tags',
                                      'pgm_model_version_tags', 'pgm_aliases', 'pgm_version_files', 'pgm_artifacts',
                                      'pgm_blobs', 'pgm_blob_pieces', 'pgm_history', 'pgm_schema_info'];
    reader CONSTANT BOOLEAN := EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgmodels_reader');
    t RECORD;
BEGIN
    FOR t IN SELECT c.oid::regclass::text AS name, c.relname = ANY (hidden) AS is_hidden
             FROM pg_catalog.pg_class c
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
               AND c.relname = ANY (hidden || readable) LOOP
        IF t.is_hidden THEN
            EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', t.name);
        END IF;
        IF reader THEN
            EXECUTE format(CASE WHEN t.is_hidden THEN 'REVOKE ALL ON %s FROM pgmodels_reader'
                                ELSE 'GRANT SELECT ON %s TO pgmodels_reader' END, t.name);
        END IF;
    END LOOP;
END $$;

UPDATE pgm_schema_info SET schema_version = GREATEST(schema_version, 5);
