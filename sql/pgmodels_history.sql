-- Change history: every change of a registered model or a version, recorded by the database
-- itself (AFTER triggers), so that plain SQL changes are recorded as well as the store's.
-- Append-only: only the table's owner can change or remove rows. Every row is also announced
-- with NOTIFY pgmodels_changes (the row as JSON, or just its id when too long for a payload).
-- Idempotent; run after sql/pgmodels_schema.sql.
--   psql -d your_database -f sql/pgmodels_history.sql
--
-- Versions numbered <= 0 are placeholders of a registration still in progress: they are
-- recorded once renumbered (one model_version_created under the final number). Changes that
-- only follow from deleting or renaming a whole registered model (its versions, tags and
-- aliases going with it) are not repeated row by row: registered_model_deleted / _renamed says it.

CREATE TABLE IF NOT EXISTS pgm_history (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    txid        XID8 NOT NULL DEFAULT pg_current_xact_id(),
    db_user     TEXT NOT NULL DEFAULT session_user,
    mlflow_user TEXT,
    name        TEXT NOT NULL,
    version     INTEGER,
    action      TEXT NOT NULL,
    old         JSONB,
    new         JSONB
);
CREATE INDEX IF NOT EXISTS pgm_history_name_idx ON pgm_history (name, id);
-- "Was this created in the same transaction?" (the webhook fan-out folds such tags into the
-- created event): one probe, not a walk through every history row of the model.
CREATE INDEX IF NOT EXISTS pgm_history_created_idx ON pgm_history (txid, name, version)
    WHERE action IN ('registered_model_created', 'model_version_created');
CREATE INDEX IF NOT EXISTS pgm_history_renames_idx ON pgm_history ((old ->> 'name'), (new ->> 'name'))
    WHERE action = 'registered_model_renamed';

-- For the files that create the store's functions (this one, sql/pgmodels_governance.sql):
-- pin the search_path of each of p_functions (signatures), so that no one else's objects can
-- stand in for the ones they use; run each as its owner (p_definer) or as its caller; and let no
-- one else call them directly (EXECUTE revoked from PUBLIC).
CREATE OR REPLACE PROCEDURE pgm_pin_functions(p_functions TEXT[], p_definer BOOLEAN) AS $$
DECLARE
    f TEXT;
BEGIN
    FOREACH f IN ARRAY p_functions LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY %s SET search_path = pg_catalog, %I, pg_temp',
                       f, CASE WHEN p_definer THEN 'DEFINER' ELSE 'INVOKER' END, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$ LANGUAGE plpgsql;

-- One history row, and its announcement.
CREATE OR REPLACE FUNCTION pgm_history_record(p_name TEXT, p_version INTEGER, p_action TEXT,
                                              p_old JSONB, p_new JSONB) RETURNS void AS $$
DECLARE
    rec pgm_history;
    payload TEXT;
BEGIN
    INSERT INTO pgm_history (mlflow_user, name, version, action, old, new)
    VALUES (nullif(current_setting('pgmodels.mlflow_user', true), ''), p_name, p_version, p_action, p_old, p_new)
    RETURNING * INTO rec;
    payload := row_to_json(rec)::text;
    IF octet_length(payload) > 7900 THEN
        payload := rec.id::text;
    END IF;
    PERFORM pg_notify('pgmodels_changes', payload);
END
$$ LANGUAGE plpgsql;

-- The tags of a version that is being created; (placeholder, final) numbers: the cascade
-- that renumbers its tags may run before or after this.
CREATE OR REPLACE FUNCTION pgm_history_version_tags(p_name TEXT, p_versions INTEGER[]) RETURNS void AS $$
DECLARE
    t RECORD;
BEGIN
    FOR t IN SELECT key, value FROM pgm_model_version_tags
             WHERE name = p_name AND version = ANY (p_versions) ORDER BY key LOOP
        PERFORM pgm_history_record(p_name, p_versions[array_length(p_versions, 1)], 'model_version_tag_set',
                                   NULL, jsonb_build_object('key', t.key, 'value', t.value));
    END LOOP;
END
$$ LANGUAGE plpgsql;

-- A version's recorded fields. Column by column, never the whole row: a models row as a value
-- would carry its model_binary, read out of TOAST (a 100 MB model: seconds per change).
CREATE OR REPLACE FUNCTION pgm_history_version_fields(source TEXT, run_id TEXT, model_id TEXT, event TEXT,
        model_type TEXT, is_active BOOLEAN, stage TEXT, description TEXT, user_id TEXT) RETURNS JSONB AS $$
    SELECT jsonb_build_object('source', source, 'run_id', run_id, 'model_id', model_id, 'event', event,
                              'model_type', model_type, 'is_active', is_active, 'stage', stage,
                              'description', description, 'user_id', user_id)
$$ LANGUAGE sql IMMUTABLE;

-- models: versions created / deleted, stage and is_active, description, the event and
-- model_type columns (tags).
CREATE OR REPLACE FUNCTION pgm_history_models() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.version > 0 THEN
            PERFORM pgm_history_record(NEW.name, NEW.version, 'model_version_created', NULL,
                                       pgm_history_version_fields(NEW.source, NEW.run_id, NEW.model_id, NEW.event,
                                           NEW.model_type, NEW.is_active, NEW.stage, NEW.description, NEW.user_id));
        END IF;
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        -- a version going with its registered model: registered_model_deleted is the record
        IF OLD.version > 0 AND EXISTS (SELECT 1 FROM pgm_registered_models WHERE name = OLD.name) THEN
            PERFORM pgm_history_record(OLD.name, OLD.version, 'model_version_deleted',
                                       pgm_history_version_fields(OLD.source, OLD.run_id, OLD.model_id, OLD.event,
                                           OLD.model_type, OLD.is_active, OLD.stage, OLD.description, OLD.user_id), NULL);
        END IF;
        RETURN NULL;
    END IF;
    IF OLD.name IS DISTINCT FROM NEW.name THEN
        RETURN NULL;  -- a rename of the registered model: registered_model_renamed is the record
    END IF;
    IF OLD.version <> NEW.version THEN
        IF OLD.version > 0 THEN
            PERFORM pgm_history_record(OLD.name, OLD.version, 'model_version_deleted',
                                       pgm_history_version_fields(OLD.source, OLD.run_id, OLD.model_id, OLD.event,
                                           OLD.model_type, OLD.is_active, OLD.stage, OLD.description, OLD.user_id), NULL);
        END IF;
        IF NEW.version > 0 THEN
            PERFORM pgm_history_record(NEW.name, NEW.version, 'model_version_created', NULL,
                                       pgm_history_version_fields(NEW.source, NEW.run_id, NEW.model_id, NEW.event,
                                           NEW.model_type, NEW.is_active, NEW.stage, NEW.description, NEW.user_id));
            PERFORM pgm_history_version_tags(NEW.name, ARRAY[OLD.version, NEW.version]);
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.version <= 0 THEN
        RETURN NULL;
    END IF;
    IF (OLD.stage, OLD.is_active) IS DISTINCT FROM (NEW.stage, NEW.is_active) THEN
        PERFORM pgm_history_record(NEW.name, NEW.version, 'model_version_stage_changed',
                                   jsonb_build_object('stage', OLD.stage, 'is_active', OLD.is_active),
                                   jsonb_build_object('stage', NEW.stage, 'is_active', NEW.is_active));
    END IF;
    IF OLD.description IS DISTINCT FROM NEW.description THEN
        PERFORM pgm_history_record(NEW.name, NEW.version, 'model_version_description_changed',
                                   jsonb_build_object('description', OLD.description),
                                   jsonb_build_object('description', NEW.description));
    END IF;
    IF OLD.event IS DISTINCT FROM NEW.event THEN
        PERFORM pgm_history_record(NEW.name, NEW.version, 'model_version_tag_set',
                                   jsonb_build_object('key', 'event', 'value', OLD.event),
                                   jsonb_build_object('key', 'event', 'value', NEW.event));
    END IF;
    IF OLD.model_type IS DISTINCT FROM NEW.model_type THEN
        PERFORM pgm_history_record(NEW.name, NEW.version, 'model_version_tag_set',
                                   jsonb_build_object('key', 'model_type', 'value', OLD.model_type),
                                   jsonb_build_object('key', 'model_type', 'value', NEW.model_type));
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- pgm_registered_models: created, renamed, description, deleted.
CREATE OR REPLACE FUNCTION pgm_history_registered_models() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pgm_history_record(NEW.name, NULL, 'registered_model_created', NULL,
                                   jsonb_build_object('description', NEW.description, 'tags', '{}'::jsonb));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pgm_history_record(OLD.name, NULL, 'registered_model_deleted',
                                   jsonb_build_object('description', OLD.description), NULL);
    ELSE
        IF OLD.name <> NEW.name THEN
            PERFORM pgm_history_record(NEW.name, NULL, 'registered_model_renamed',
                                       jsonb_build_object('name', OLD.name), jsonb_build_object('name', NEW.name));
        END IF;
        IF OLD.description IS DISTINCT FROM NEW.description THEN
            PERFORM pgm_history_record(NEW.name, NULL, 'registered_model_description_changed',
                                       jsonb_build_object('description', OLD.description),
                                       jsonb_build_object('description', NEW.description));
        END IF;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- pgm_registered_model_tags and pgm_model_version_tags: set (created or changed), deleted. Not
-- for placeholder versions, nor when the version or model goes or is renamed / renumbered.
CREATE OR REPLACE FUNCTION pgm_history_tags() RETURNS trigger AS $$
DECLARE
    kind TEXT := CASE WHEN TG_TABLE_NAME = 'pgm_model_version_tags' THEN 'model_version' ELSE 'registered_model' END;
    o JSONB := to_jsonb(OLD);
    n JSONB := to_jsonb(NEW);
    r JSONB := coalesce(n, o);
BEGIN
    IF (o ->> 'version')::int <= 0 OR (n ->> 'version')::int <= 0
       OR o ->> 'name' <> n ->> 'name' OR o ->> 'version' <> n ->> 'version' THEN
        RETURN NULL;
    END IF;
    IF n IS NULL AND NOT (CASE kind
            WHEN 'model_version' THEN EXISTS (SELECT 1 FROM models WHERE name = o ->> 'name'
                                                                      AND version = (o ->> 'version')::int)
            ELSE EXISTS (SELECT 1 FROM pgm_registered_models WHERE name = o ->> 'name') END) THEN
        RETURN NULL;
    END IF;
    IF o IS NOT NULL AND (n IS NULL OR o ->> 'key' <> n ->> 'key') THEN
        PERFORM pgm_history_record(o ->> 'name', (o ->> 'version')::int, kind || '_tag_deleted',
                                   jsonb_build_object('key', o -> 'key', 'value', o -> 'value'), NULL);
    END IF;
    IF n IS NOT NULL AND (o IS NULL OR o ->> 'key' <> n ->> 'key' OR o -> 'value' <> n -> 'value') THEN
        PERFORM pgm_history_record(r ->> 'name', (r ->> 'version')::int, kind || '_tag_set',
                                   CASE WHEN o ->> 'key' = n ->> 'key'
                                        THEN jsonb_build_object('key', o -> 'key', 'value', o -> 'value') END,
                                   jsonb_build_object('key', n -> 'key', 'value', n -> 'value'));
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- pgm_aliases: set (created or moved), deleted (not when the version it points at goes).
CREATE OR REPLACE FUNCTION pgm_history_aliases() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.version > 0 THEN
            PERFORM pgm_history_record(NEW.name, NEW.version, 'alias_set', NULL,
                                       jsonb_build_object('alias', NEW.alias, 'version', NEW.version));
        END IF;
        RETURN NULL;
    END IF;
    IF OLD.version <= 0 THEN  -- a placeholder version being numbered: the alias appears
        IF TG_OP = 'UPDATE' AND NEW.version > 0 THEN
            PERFORM pgm_history_record(NEW.name, NEW.version, 'alias_set', NULL,
                                       jsonb_build_object('alias', NEW.alias, 'version', NEW.version));
        END IF;
        RETURN NULL;
    END IF;
    -- the version it pointed at is gone or renumbered (cascades): that version's row says it
    IF NOT EXISTS (SELECT 1 FROM models WHERE name = OLD.name AND version = OLD.version) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' OR OLD.alias <> NEW.alias THEN
        PERFORM pgm_history_record(OLD.name, OLD.version, 'alias_deleted',
                                   jsonb_build_object('alias', OLD.alias, 'version', OLD.version), NULL);
        IF TG_OP = 'UPDATE' THEN
            PERFORM pgm_history_record(NEW.name, NEW.version, 'alias_set', NULL,
                                       jsonb_build_object('alias', NEW.alias, 'version', NEW.version));
        END IF;
    ELSIF OLD.version <> NEW.version THEN
        PERFORM pgm_history_record(NEW.name, NEW.version, 'alias_set',
                                   jsonb_build_object('alias', OLD.alias, 'version', OLD.version),
                                   jsonb_build_object('alias', NEW.alias, 'version', NEW.version));
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- Writers need no right on pgm_history: the trigger functions run as the table's owner
-- (SECURITY DEFINER; PostgreSQL calls a trigger function only from its trigger). The recording
-- functions they call run as their caller, the owner inside a trigger, and no one else may
-- call them (sql/pgmodels_privileges.sql): a row of history is only ever written by the change
-- it records. Every search_path is pinned (pgm_pin_functions).
CALL pgm_pin_functions(ARRAY['pgm_history_models()', 'pgm_history_registered_models()', 'pgm_history_tags()',
                             'pgm_history_aliases()'], true);
CALL pgm_pin_functions(ARRAY['pgm_history_record(text,integer,text,jsonb,jsonb)',
                             'pgm_history_version_tags(text,integer[])'], false);

DROP TRIGGER IF EXISTS pgm_history ON models;
CREATE TRIGGER pgm_history
    AFTER INSERT OR UPDATE OF name, version, stage, is_active, description, event, model_type OR DELETE ON models
    FOR EACH ROW EXECUTE FUNCTION pgm_history_models();
DROP TRIGGER IF EXISTS pgm_history ON pgm_registered_models;
CREATE TRIGGER pgm_history AFTER INSERT OR UPDATE OF name, description OR DELETE ON pgm_registered_models
    FOR EACH ROW EXECUTE FUNCTION pgm_history_registered_models();
DROP TRIGGER IF EXISTS pgm_history ON pgm_registered_model_tags;
CREATE TRIGGER pgm_history AFTER INSERT OR UPDATE OR DELETE ON pgm_registered_model_tags
    FOR EACH ROW EXECUTE FUNCTION pgm_history_tags();
DROP TRIGGER IF EXISTS pgm_history ON pgm_model_version_tags;
CREATE TRIGGER pgm_history AFTER INSERT OR UPDATE OR DELETE ON pgm_model_version_tags
    FOR EACH ROW EXECUTE FUNCTION pgm_history_tags();
DROP TRIGGER IF EXISTS pgm_history ON pgm_aliases;
CREATE TRIGGER pgm_history AFTER INSERT OR UPDATE OR DELETE ON pgm_aliases
    FOR EACH ROW EXECUTE FUNCTION pgm_history_aliases();

-- Append-only. Rights first; the trigger also holds against rights granted later (e.g. by
-- re-running sql/roles.sql, which grants writers every table). Not SECURITY DEFINER: it checks
-- the role doing the change, which inside the recording functions above is the owner.
CREATE OR REPLACE FUNCTION pgm_history_guard() RETURNS trigger AS $$
BEGIN
    IF NOT pg_has_role(current_user, (SELECT relowner FROM pg_catalog.pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        RAISE EXCEPTION 'pgm_history is append-only: % is refused (rows are written by the database''s triggers, '
                        'and only the owner of the table can change or remove them)', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS pgm_history_append_only ON pgm_history;
CREATE TRIGGER pgm_history_append_only BEFORE INSERT OR UPDATE OR DELETE ON pgm_history
    FOR EACH ROW EXECUTE FUNCTION pgm_history_guard();
DROP TRIGGER IF EXISTS pgm_history_no_truncate ON pgm_history;
CREATE TRIGGER pgm_history_no_truncate BEFORE TRUNCATE ON pgm_history
    FOR EACH STATEMENT EXECUTE FUNCTION pgm_history_guard();

REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON pgm_history FROM PUBLIC;
DO $$
DECLARE
    r TEXT;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgmodels_reader', 'pgmodels_writer'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON pgm_history FROM %I', r);
            EXECUTE format('GRANT SELECT ON pgm_history TO %I', r);
        END IF;
    END LOOP;
END $$;

-- The history of the model known as p_name, following renames: rows under that name, rows
-- under an earlier name before it was renamed to it, rows under a later name after it was
-- renamed from it (and so on, through every rename).
CREATE OR REPLACE FUNCTION pgm_model_history(p_name TEXT) RETURNS SETOF pgm_history AS $$
    WITH RECURSIVE spans(name, lo, hi) AS (
        SELECT p_name, '-infinity'::timestamptz, 'infinity'::timestamptz
        UNION
        SELECT CASE WHEN r.new ->> 'name' = s.name THEN r.old ->> 'name' ELSE r.new ->> 'name' END,
               CASE WHEN r.new ->> 'name' = s.name THEN '-infinity'::timestamptz ELSE r.at END,
               CASE WHEN r.new ->> 'name' = s.name THEN r.at ELSE 'infinity'::timestamptz END
        FROM spans s JOIN pgm_history r ON r.action = 'registered_model_renamed'
            AND ((r.new ->> 'name' = s.name AND r.at >= s.lo AND r.at < s.hi)
                 OR (r.old ->> 'name' = s.name AND r.at >= s.lo AND r.at < s.hi))
    )
    SELECT h.* FROM pgm_history h
    WHERE EXISTS (SELECT 1 FROM spans s WHERE h.name = s.name AND h.at >= s.lo AND h.at < s.hi)
$$ LANGUAGE sql STABLE;
