-- Governance the database enforces for every client (MLflow, the UI through mlflow server, the
-- helper API, plain SQL): protected aliases and stages, four-eyes promotion, per-model write
-- rights. The rules are rows of pgm_protections / pgm_four_eyes / pgm_write_rights, read by BEFORE
-- triggers at each write, so a rule change holds at once for every session. docs/governance.md.
-- Idempotent; run after sql/pgmodels_history.sql.
--   psql -d your_database -f sql/pgmodels_governance.sql
--
-- Who is asking: session_user, the role that logged in. Not current_user: cascades of foreign keys
-- run as the tables' owner, and so does every SECURITY DEFINER function; and SET ROLE cannot make
-- one user pass for another (four-eyes). A refusal is SQLSTATE 42501 (insufficient_privilege),
-- PERMISSION_DENIED in MLflow, with a message naming the rule and the role it needs.
--
-- Patterns of model names: '*' stands for any run of characters ('*' alone: every model,
-- 'team-a-*': the names starting so); every other character stands for itself.

-- Which aliases and stages are protected, and which role may set, move or remove them. One role per
-- rule (a group role stands for several). Several rules can match one name ('*' and 'churn'):
-- each must be satisfied. kind 'alias' with value 'latest' protects what models:/NAME/latest
-- resolves to (the highest active version).
--   INSERT INTO pgm_protections (name_pattern, kind, value, role) VALUES ('churn', 'alias', 'champion', 'release_managers')
--   ON CONFLICT (name_pattern, kind, value) DO UPDATE SET role = EXCLUDED.role;
CREATE TABLE IF NOT EXISTS pgm_protections (
    name_pattern VARCHAR(255) NOT NULL,
    kind VARCHAR(5) NOT NULL CHECK (kind IN ('alias', 'stage')),
    value VARCHAR(255) NOT NULL,
    role NAME NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by NAME NOT NULL DEFAULT session_user,
    PRIMARY KEY (name_pattern, kind, value),
    CHECK (kind <> 'stage' OR value IN ('Staging', 'Production', 'Archived'))
);

-- Models whose versions reach a protected alias or stage only once approved by a second person.
CREATE TABLE IF NOT EXISTS pgm_four_eyes (
    name_pattern VARCHAR(255) PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by NAME NOT NULL DEFAULT session_user
);

-- Approvals: INSERT (name, version) as the approving user; only the owner changes or removes one.
CREATE TABLE IF NOT EXISTS pgm_approvals (
    name VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    approved_by NAME NOT NULL DEFAULT session_user,
    approved_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version, approved_by),
    FOREIGN KEY (name, version) REFERENCES models (name, version) ON UPDATE CASCADE ON DELETE CASCADE
);

-- Per-model write rights: a user who is a member of a role listed here may write only the models
-- matching one of the patterns listed for its roles. Users in no listed role are not limited.
CREATE TABLE IF NOT EXISTS pgm_write_rights (
    role NAME NOT NULL,
    name_pattern VARCHAR(255) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by NAME NOT NULL DEFAULT session_user,
    PRIMARY KEY (role, name_pattern)
);

-- The database user that registered a version (the four-eyes rule needs it). Added without a
-- default first: a default on ADD COLUMN would stamp the upgrading user on every existing row.
ALTER TABLE models ADD COLUMN IF NOT EXISTS registered_by TEXT;
ALTER TABLE models ALTER COLUMN registered_by SET DEFAULT session_user;

CREATE OR REPLACE FUNCTION pgm_name_matches(p_name TEXT, p_pattern TEXT) RETURNS BOOLEAN AS $$
    SELECT p_name LIKE replace(replace(replace(replace(p_pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')
$$ LANGUAGE sql IMMUTABLE;

-- Whether the session's user owns the store: a member of the owner of models (superusers are
-- members of every role) or of pgmodels_owner. Owners pass every rule but four-eyes.
CREATE OR REPLACE FUNCTION pgm_session_is_owner() RETURNS BOOLEAN AS $$
    SELECT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = 'models'::regclass), 'MEMBER')
        OR coalesce(pg_has_role(session_user, to_regrole('pgmodels_owner'), 'MEMBER'), false)
$$ LANGUAGE sql STABLE;

-- Whether the session's user is a member of p_role (false for a role that does not exist).
CREATE OR REPLACE FUNCTION pgm_session_in_role(p_role TEXT) RETURNS BOOLEAN AS $$
    SELECT coalesce(pg_has_role(session_user, to_regrole(quote_ident(p_role)), 'MEMBER'), false)
$$ LANGUAGE sql STABLE;

-- Refuse a write of model p_name when the session's user may not write it (pgm_write_rights).
CREATE OR REPLACE FUNCTION pgm_check_write(p_name TEXT, p_what TEXT) RETURNS void AS $$
DECLARE
    allowed BOOLEAN;
    limits TEXT;
BEGIN
    IF p_name IS NULL OR NOT EXISTS (SELECT 1 FROM pgm_write_rights) THEN
        RETURN;
    END IF;
    SELECT bool_or(pgm_name_matches(p_name, w.name_pattern)),
           string_agg(format('%s (role %s)', w.name_pattern, w.role), ', ' ORDER BY w.name_pattern)
      INTO allowed, limits FROM pgm_write_rights w WHERE pgm_session_in_role(w.role);
    IF limits IS NULL OR allowed OR pgm_session_is_owner() THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'pgmodels governance: cannot %: database user % may write only the models % (pgm_write_rights), not ''%''',
                    p_what, session_user, limits, p_name
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Ask the owner of the store for write rights (mlflow-pgmodels write-rights ROLE --models PATTERN).';
END
$$ LANGUAGE plpgsql STABLE;

-- Whether a version of p_name needs an approval before it reaches a protected alias or stage.
CREATE OR REPLACE FUNCTION pgm_four_eyes_on(p_name TEXT) RETURNS BOOLEAN AS $$
    SELECT EXISTS (SELECT 1 FROM pgm_four_eyes f WHERE pgm_name_matches(p_name, f.name_pattern))
$$ LANGUAGE sql STABLE;

-- Whether version p_version of p_name is approved by someone other than its registrant.
CREATE OR REPLACE FUNCTION pgm_is_approved(p_name TEXT, p_version INTEGER) RETURNS BOOLEAN AS $$
    SELECT EXISTS (SELECT 1 FROM pgm_approvals a JOIN models m ON m.name = a.name AND m.version = a.version
                   WHERE a.name = p_name AND a.version = p_version AND a.approved_by IS DISTINCT FROM m.registered_by)
$$ LANGUAGE sql STABLE;

-- Whether (p_name, p_kind, p_value) is protected at all.
CREATE OR REPLACE FUNCTION pgm_is_protected(p_name TEXT, p_kind TEXT, p_value TEXT) RETURNS BOOLEAN AS $$
    SELECT EXISTS (SELECT 1 FROM pgm_protections p
                   WHERE p.kind = p_kind AND p.value = p_value AND pgm_name_matches(p_name, p.name_pattern))
$$ LANGUAGE sql STABLE;

-- Refuse a change of protected alias or stage p_value of p_name unless the session's user is in
-- the role of every rule for it; with p_version (the version it would then point at / hold), also
-- unless that version is approved where four-eyes is on.
CREATE OR REPLACE FUNCTION pgm_check_protected(p_name TEXT, p_kind TEXT, p_value TEXT, p_version INTEGER,
                                               p_what TEXT) RETURNS void AS $$
DECLARE
    rule pgm_protections;
BEGIN
    IF NOT pgm_is_protected(p_name, p_kind, p_value) THEN
        RETURN;
    END IF;
    IF NOT pgm_session_is_owner() THEN
        SELECT * INTO rule FROM pgm_protections p
         WHERE p.kind = p_kind AND p.value = p_value AND pgm_name_matches(p_name, p.name_pattern)
           AND NOT pgm_session_in_role(p.role)
         ORDER BY p.name_pattern = p_name DESC, length(p.name_pattern) DESC LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgmodels governance: cannot %: % ''%'' of model ''%'' is protected (rule: protect ''%'' --% % --role %) '
                            'and database user % is not a member of role %',
                            p_what, p_kind, p_value, p_name, rule.name_pattern, rule.kind, rule.value, rule.role,
                            session_user, rule.role
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('Ask a member of role %s, or the owner to grant %s to you.', rule.role, rule.role);
        END IF;
    END IF;
    IF p_version IS NOT NULL AND pgm_four_eyes_on(p_name) AND NOT pgm_is_approved(p_name, p_version) THEN
        RAISE EXCEPTION 'pgmodels governance: cannot %: four-eyes is on for model ''%'' and version % is not approved '
                        'by a database user other than the one who registered it (mlflow-pgmodels approve ''%'' %)',
                        p_what, p_name, p_version, p_name, p_version
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$ LANGUAGE plpgsql STABLE;

-- The highest active version of p_name, not counting version p_skip.
CREATE OR REPLACE FUNCTION pgm_latest_without(p_name TEXT, p_skip INTEGER) RETURNS INTEGER AS $$
    SELECT max(version) FROM models
     WHERE name = p_name AND is_active IS NOT FALSE AND version > 0 AND version IS DISTINCT FROM p_skip
$$ LANGUAGE sql STABLE;

-- models: write rights; the registrant; stages in and out of protected ones; what `latest` is.
CREATE OR REPLACE FUNCTION pgm_governance_models() RETURNS trigger AS $$
DECLARE
    o_stage TEXT;
    n_stage TEXT;
    n TEXT;
    before_latest INTEGER;
    after_latest INTEGER;
    registering BOOLEAN := TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND OLD.version <= 0);
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pgm_check_write(OLD.name, format('change model %L version %s', OLD.name, OLD.version));
        o_stage := CASE WHEN OLD.is_active IS FALSE THEN 'Archived' ELSE OLD.stage END;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF TG_OP = 'INSERT' OR NEW.name IS DISTINCT FROM OLD.name THEN
            PERFORM pgm_check_write(NEW.name, format('write model %L', NEW.name));
        END IF;
        IF NEW.registered_by IS DISTINCT FROM (CASE WHEN TG_OP = 'INSERT' THEN session_user::text ELSE OLD.registered_by END)
           AND NOT pgm_session_is_owner() THEN
            RAISE EXCEPTION 'pgmodels governance: registered_by of model ''%'' version % is the database user that '
                            'registered it (%); only the owner can set it', NEW.name, NEW.version, session_user
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    IF (TG_OP = 'INSERT' AND NEW.version <= 0) OR (TG_OP = 'DELETE' AND OLD.version <= 0)
       OR (TG_OP = 'UPDATE' AND NEW.version <= 0) THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;  -- a registration in progress
    END IF;

    -- latest: for each name the change concerns, the highest active version before and after it
    FOREACH n IN ARRAY (CASE WHEN TG_OP = 'INSERT' THEN ARRAY[NEW.name] WHEN TG_OP = 'DELETE' THEN ARRAY[OLD.name]
                             WHEN (OLD.name, OLD.version, OLD.is_active IS NOT FALSE)
                                  = (NEW.name, NEW.version, NEW.is_active IS NOT FALSE) THEN ARRAY[]::TEXT[]
                             WHEN OLD.name = NEW.name THEN ARRAY[NEW.name] ELSE ARRAY[OLD.name, NEW.name] END) LOOP
        CONTINUE WHEN NOT pgm_is_protected(n, 'alias', 'latest');
        -- changes of one name's active versions one after another, so that two that each leave
        -- latest alone cannot move it together
        PERFORM 1 FROM pgm_registered_models WHERE name = n FOR NO KEY UPDATE;
        before_latest := pgm_latest_without(n, NULL);
        after_latest := pgm_latest_without(n, CASE WHEN TG_OP <> 'INSERT' AND OLD.name = n AND OLD.version > 0
                                                   THEN OLD.version END);
        IF TG_OP <> 'DELETE' AND NEW.name = n AND NEW.is_active IS NOT FALSE THEN
            after_latest := GREATEST(after_latest, NEW.version);
        END IF;
        CONTINUE WHEN before_latest IS NOT DISTINCT FROM after_latest;
        IF registering AND after_latest = NEW.version AND NEW.name = n THEN
            -- a new version would become latest: it arrives archived unless it may
            BEGIN
                PERFORM pgm_check_protected(n, 'alias', 'latest', NEW.version,
                                            format('make new version %s of %L latest', NEW.version, n));
            EXCEPTION WHEN insufficient_privilege THEN
                NEW.is_active := false;
                NEW.stage := 'None';
                RAISE NOTICE 'pgmodels governance: version % of model ''%'' is registered as Archived: latest is '
                             'protected (%)', NEW.version, n, SQLERRM;
            END;
        ELSE
            PERFORM pgm_check_protected(n, 'alias', 'latest', after_latest,
                                        format('change what latest of %L is (version %s to %s)', n,
                                               coalesce(before_latest::text, 'none'), coalesce(after_latest::text, 'none')));
        END IF;
    END LOOP;

    IF TG_OP <> 'DELETE' THEN
        n_stage := CASE WHEN NEW.is_active IS FALSE THEN 'Archived' ELSE NEW.stage END;
    END IF;
    IF o_stage IS NOT DISTINCT FROM n_stage AND (TG_OP <> 'UPDATE' OR OLD.name = NEW.name) AND NOT registering THEN
        RETURN NEW;
    END IF;
    IF o_stage IS NOT NULL AND o_stage <> 'None' AND NOT registering THEN
        PERFORM pgm_check_protected(OLD.name, 'stage', o_stage, NULL,
                                    format('take model %L version %s out of stage %s', OLD.name, OLD.version, o_stage));
    END IF;
    IF n_stage IS NOT NULL AND n_stage <> 'None' THEN
        -- a rename carries an approved version along: only the role is checked then
        PERFORM pgm_check_protected(NEW.name, 'stage', n_stage,
                                    CASE WHEN o_stage IS DISTINCT FROM n_stage OR registering THEN NEW.version END,
                                    format('put model %L version %s in stage %s', NEW.name, NEW.version, n_stage));
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$ LANGUAGE plpgsql;

-- pgm_aliases: set, move, remove (also when the version or model goes, or is renamed).
CREATE OR REPLACE FUNCTION pgm_governance_aliases() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pgm_check_write(OLD.name, format('change alias %L of %L', OLD.alias, OLD.name));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pgm_check_write(NEW.name, format('set alias %L of %L', NEW.alias, NEW.name));
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pgm_check_protected(NEW.name, 'alias', NEW.alias, NEW.version,
                                    format('set alias %L of model %L to version %s', NEW.alias, NEW.name, NEW.version));
        RETURN NEW;
    END IF;
    IF OLD.version <= 0 OR (TG_OP = 'UPDATE' AND (OLD.name, OLD.alias, OLD.version) = (NEW.name, NEW.alias, NEW.version)) THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM pgm_check_protected(OLD.name, 'alias', OLD.alias, NULL,
                                    format('remove alias %L of model %L (version %s)', OLD.alias, OLD.name, OLD.version));
        RETURN OLD;
    END IF;
    IF (OLD.name, OLD.alias) = (NEW.name, NEW.alias) THEN
        PERFORM pgm_check_protected(NEW.name, 'alias', NEW.alias, NEW.version,
                                    format('move alias %L of model %L from version %s to %s', NEW.alias, NEW.name,
                                           OLD.version, NEW.version));
    ELSE
        PERFORM pgm_check_protected(OLD.name, 'alias', OLD.alias, NULL,
                                    format('remove alias %L of model %L', OLD.alias, OLD.name));
        -- a rename carries an approved version along: only the role is checked then
        PERFORM pgm_check_protected(NEW.name, 'alias', NEW.alias,
                                    CASE WHEN OLD.version <> NEW.version THEN NEW.version END,
                                    format('set alias %L of model %L to version %s', NEW.alias, NEW.name, NEW.version));
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

-- pgm_registered_models and the tag tables: write rights.
CREATE OR REPLACE FUNCTION pgm_governance_names() RETURNS trigger AS $$
DECLARE
    o JSONB := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    n JSONB := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
BEGIN
    IF o IS NOT NULL THEN
        PERFORM pgm_check_write(o ->> 'name', format('change %L', o ->> 'name'));
    END IF;
    IF n IS NOT NULL AND n ->> 'name' IS DISTINCT FROM o ->> 'name' THEN
        PERFORM pgm_check_write(n ->> 'name', format('write %L', n ->> 'name'));
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$ LANGUAGE plpgsql;

-- The version tag pgmodels.approved_by is written by approvals only (pgm_governance_approved, as
-- the owner) and by cascades (as the owner). Not SECURITY DEFINER: it checks the role doing the change.
CREATE OR REPLACE FUNCTION pgm_governance_approval_tag() RETURNS trigger AS $$
DECLARE
    touched TEXT;
BEGIN
    IF TG_OP <> 'DELETE' AND NEW.key LIKE 'pgmodels.approv%' THEN
        touched := NEW.key;
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.key LIKE 'pgmodels.approv%' THEN
        touched := OLD.key;
    END IF;
    IF touched IS NOT NULL AND NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        RAISE EXCEPTION 'pgmodels governance: the tag % of a version is written by approvals only (mlflow-pgmodels approve)',
                        touched
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$ LANGUAGE plpgsql;

-- The rule tables (and changes of approvals): only the owner writes them (rights first; the trigger
-- also holds against rights granted later, e.g. by re-running sql/roles.sql, which grants writers
-- every table). Not SECURITY DEFINER: it checks the role doing the change (the owner in cascades).
CREATE OR REPLACE FUNCTION pgm_governance_owner_only() RETURNS trigger AS $$
BEGIN
    IF NOT (pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')
            OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'pgmodels_owner'
                       AND pg_has_role(current_user, r.oid, 'MEMBER'))) THEN
        RAISE EXCEPTION 'pgmodels governance: only the owner of the store (a member of pgmodels_owner) can change % (% refused)',
                        TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP <> 'DELETE' AND TG_TABLE_NAME IN ('pgm_protections', 'pgm_write_rights')
       AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = to_jsonb(NEW) ->> 'role') THEN
        RAISE EXCEPTION 'pgmodels governance: role % does not exist', to_jsonb(NEW) ->> 'role'
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$ LANGUAGE plpgsql;

-- An approval: INSERT INTO pgm_approvals (name, version) VALUES ('churn', 7), as the approving
-- user. approved_by is always the session's user, and it must not be the one who registered the
-- version; the approver must be allowed to write the model.
CREATE OR REPLACE FUNCTION pgm_governance_approve() RETURNS trigger AS $$
DECLARE
    registrant TEXT;
BEGIN
    SELECT registered_by INTO registrant FROM models WHERE name = NEW.name AND version = NEW.version FOR SHARE;
    IF registrant = session_user THEN
        RAISE EXCEPTION 'pgmodels governance: cannot approve model ''%'' version %: database user % registered it, '
                        'and approving your own version is refused (four-eyes: another user approves)',
                        NEW.name, NEW.version, session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM pgm_check_write(NEW.name, format('approve model %L version %s', NEW.name, NEW.version));
    NEW.approved_by := session_user;
    NEW.approved_at := now();
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

-- The approvers of a version as its tag pgmodels.approved_by (so the UI, the history and webhooks
-- show it: model_version_tag.set).
CREATE OR REPLACE FUNCTION pgm_governance_approved() RETURNS trigger AS $$
BEGIN
    INSERT INTO pgm_model_version_tags (name, version, key, value)
    SELECT NEW.name, NEW.version, 'pgmodels.approved_by', string_agg(approved_by, ', ' ORDER BY approved_at, approved_by)
      FROM pgm_approvals WHERE name = NEW.name AND version = NEW.version
    ON CONFLICT (name, version, key) DO UPDATE SET value = EXCLUDED.value;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- Rule changes are history too (pgm_history, under the rule's name pattern: `mlflow-pgmodels
-- history churn` shows the rules made for churn; webhooks with all_changes get them as
-- pgmodels.<action>).
CREATE OR REPLACE FUNCTION pgm_governance_audit() RETURNS trigger AS $$
DECLARE
    o JSONB := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) - 'created_at' - 'created_by' END;
    n JSONB := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) - 'created_at' - 'created_by' END;
    what TEXT := CASE TG_TABLE_NAME WHEN 'pgm_protections' THEN 'protection'
                                    WHEN 'pgm_four_eyes' THEN 'four_eyes' ELSE 'write_rights' END;
BEGIN
    IF o IS NOT DISTINCT FROM n THEN
        RETURN NULL;
    END IF;
    PERFORM pgm_history_record(coalesce(n, o) ->> 'name_pattern', NULL,
                               what || CASE WHEN n IS NULL THEN '_removed' ELSE '_set' END,
                               o - 'name_pattern', n - 'name_pattern');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- The trigger functions that check rules run as the owner (SECURITY DEFINER), so that writers need
-- no right on the rule tables nor on the helpers above: who is asking is session_user anyway. The
-- guards that must see who is writing (current_user: the owner in cascades and in the triggers
-- here) run as the caller. All with a pinned search_path (no one else's objects can stand in for
-- ours; the helpers run inside them, under that path: a SET of their own would keep the SQL ones
-- from being inlined). No one calls them directly: EXECUTE is revoked from PUBLIC
-- (pgm_pin_functions, sql/pgmodels_history.sql).
CALL pgm_pin_functions(ARRAY['pgm_governance_models()', 'pgm_governance_aliases()', 'pgm_governance_names()',
                             'pgm_governance_approve()', 'pgm_governance_approved()', 'pgm_governance_audit()'], true);
CALL pgm_pin_functions(ARRAY['pgm_governance_owner_only()', 'pgm_governance_approval_tag()'], false);

-- Inserts of a registration in progress (version <= 0: the store's upload, up to 1 GB in the row)
-- do not call the function: a PL/pgSQL trigger copies the row it returns. They are checked when
-- the row is numbered (an UPDATE, whose row holds the bytes by reference only).
DROP TRIGGER IF EXISTS pgm_governance ON models;
DROP TRIGGER IF EXISTS pgm_governance_insert ON models;
CREATE TRIGGER pgm_governance_insert BEFORE INSERT ON models
    FOR EACH ROW WHEN (NEW.version > 0 OR NEW.registered_by IS DISTINCT FROM session_user)
    EXECUTE FUNCTION pgm_governance_models();
CREATE TRIGGER pgm_governance BEFORE UPDATE OR DELETE ON models
    FOR EACH ROW EXECUTE FUNCTION pgm_governance_models();
DROP TRIGGER IF EXISTS pgm_governance ON pgm_aliases;
CREATE TRIGGER pgm_governance BEFORE INSERT OR UPDATE OR DELETE ON pgm_aliases
    FOR EACH ROW EXECUTE FUNCTION pgm_governance_aliases();
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['pgm_registered_models', 'pgm_registered_model_tags', 'pgm_model_version_tags'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS pgm_governance ON %I', t);
        EXECUTE format('CREATE TRIGGER pgm_governance BEFORE INSERT OR UPDATE OR DELETE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION pgm_governance_names()', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['pgm_protections', 'pgm_four_eyes', 'pgm_write_rights', 'pgm_approvals'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS pgm_governance_owner_only ON %I', t);
        EXECUTE format('CREATE TRIGGER pgm_governance_owner_only BEFORE %s ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION pgm_governance_owner_only()',
                       CASE WHEN t = 'pgm_approvals' THEN 'UPDATE OR DELETE' ELSE 'INSERT OR UPDATE OR DELETE' END, t);
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %I FROM PUBLIC', t);
        CONTINUE WHEN t = 'pgm_approvals';  -- recorded as the version's tag
        EXECUTE format('DROP TRIGGER IF EXISTS pgm_governance_audit ON %I', t);
        EXECUTE format('CREATE TRIGGER pgm_governance_audit AFTER INSERT OR UPDATE OR DELETE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION pgm_governance_audit()', t);
    END LOOP;
END $$;
DROP TRIGGER IF EXISTS pgm_governance_approval_tag ON pgm_model_version_tags;
CREATE TRIGGER pgm_governance_approval_tag BEFORE INSERT OR UPDATE OR DELETE ON pgm_model_version_tags
    FOR EACH ROW EXECUTE FUNCTION pgm_governance_approval_tag();
DROP TRIGGER IF EXISTS pgm_governance_approve ON pgm_approvals;
CREATE TRIGGER pgm_governance_approve BEFORE INSERT ON pgm_approvals
    FOR EACH ROW EXECUTE FUNCTION pgm_governance_approve();
DROP TRIGGER IF EXISTS pgm_governance_approved ON pgm_approvals;
CREATE TRIGGER pgm_governance_approved AFTER INSERT ON pgm_approvals
    FOR EACH ROW EXECUTE FUNCTION pgm_governance_approved();

UPDATE pgm_schema_info SET schema_version = GREATEST(schema_version, 5);
