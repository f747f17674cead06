-- ===================================================================== governance roles
-- The roles of governance (docs/governance.md), on top of pgmodels_reader / pgmodels_writer.
-- Run as the owner of the tables (or a superuser), after sql/roles.sql (which includes this file
-- at its end). Idempotent.
--   psql -d your_database -f sql/governance_roles.sql
--
-- pgmodels_reader          reads what predict jobs need, writes nothing (sql/roles.sql).
-- pgmodels_writer          training jobs, mlflow server: registers versions, tags, descriptions,
--                          stages and aliases that no rule protects; approves versions it did not
--                          register (four-eyes). Limited to some models by pgm_write_rights.
-- pgmodels_release_manager a writer that protection rules name: moves protected aliases (champion,
--                          latest) and stages (Production). Rules may name any other role instead.
-- pgmodels_owner           changes the rules (protect, four-eyes, write-rights) and passes them;
--                          the table owner and superusers are owners too. Still needs an
--                          approval where four-eyes is on.
-- All are group roles (NOLOGIN). Map a team's existing roles onto them with GRANT, e.g.
--   GRANT pgmodels_release_manager TO ml_leads;      -- an existing group role
--   CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE pgmodels_writer;
SELECT format('CREATE ROLE %I NOLOGIN', r) FROM unnest(ARRAY['pgmodels_release_manager', 'pgmodels_owner']) r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
GRANT pgmodels_writer TO pgmodels_release_manager;
GRANT pgmodels_release_manager TO pgmodels_owner;

-- The rules: writers read them; only owners write them (a trigger also refuses anyone else,
-- whatever rights a later GRANT ON ALL TABLES gives). Writers approve versions by inserting into
-- pgm_approvals (a trigger records who, and refuses one's own). Skipped before the schema exists
-- (run this again after mlflow-pgmodels db init).
DO $$
BEGIN
    IF to_regclass('pgm_protections') IS NULL THEN
        RAISE NOTICE 'no pgmodels governance tables here yet: rights on them not granted';
        RETURN;
    END IF;
    GRANT SELECT ON pgm_protections, pgm_four_eyes, pgm_write_rights, pgm_approvals TO pgmodels_writer;
    REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON pgm_protections, pgm_four_eyes, pgm_write_rights
        FROM pgmodels_writer, pgmodels_release_manager;
    GRANT INSERT ON pgm_approvals TO pgmodels_writer;
    REVOKE UPDATE, DELETE, TRUNCATE ON pgm_approvals FROM pgmodels_writer, pgmodels_release_manager;
    GRANT SELECT, INSERT, UPDATE, DELETE ON pgm_protections, pgm_four_eyes, pgm_write_rights TO pgmodels_owner;
END $$;
