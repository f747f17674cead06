-- MLflow webhooks on the pgmodels store: the webhooks, their events, and one delivery row per
-- (change in pgm_history, subscribed webhook). Idempotent; run after pgmodels_history.sql.

CREATE TABLE IF NOT EXISTS pgm_webhooks (
    webhook_id VARCHAR(256) PRIMARY KEY,
    name VARCHAR(256) NOT NULL,
    description VARCHAR(1000),
    url VARCHAR(500) NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'DISABLED')),
    secret VARCHAR(1000),                 -- Fernet token, as MLflow's EncryptedString stores it
    all_changes BOOLEAN NOT NULL DEFAULT false,  -- also changes MLflow has no event for
    creation_timestamp BIGINT NOT NULL,
    last_updated_timestamp BIGINT,
    deleted_timestamp BIGINT              -- soft delete, as MLflow's store does
);
CREATE INDEX IF NOT EXISTS pgm_webhooks_creation_idx ON pgm_webhooks (creation_timestamp DESC)
    WHERE deleted_timestamp IS NULL;

CREATE TABLE IF NOT EXISTS pgm_webhook_events (
    webhook_id VARCHAR(256) NOT NULL REFERENCES pgm_webhooks (webhook_id) ON DELETE CASCADE,
    entity VARCHAR(50) NOT NULL,
    action VARCHAR(50) NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,  -- the order the events were given in
    PRIMARY KEY (webhook_id, entity, action)
);
CREATE INDEX IF NOT EXISTS pgm_webhook_events_event_idx ON pgm_webhook_events (entity, action);

-- The outbox: filled at commit of the change, emptied by dispatchers with FOR UPDATE SKIP LOCKED.
CREATE TABLE IF NOT EXISTS pgm_webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    history_id BIGINT NOT NULL,           -- pgm_history.id
    webhook_id VARCHAR(256) NOT NULL REFERENCES pgm_webhooks (webhook_id) ON DELETE CASCADE,
    event VARCHAR(101) NOT NULL,          -- 'entity.action', or 'pgmodels.<history action>'
    delivery_id UUID NOT NULL DEFAULT gen_random_uuid(),  -- X-MLflow-Delivery-Id, same on retries
    status VARCHAR(16) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    status_code INTEGER,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    delivered_at TIMESTAMPTZ,
    UNIQUE (history_id, webhook_id)
);
CREATE INDEX IF NOT EXISTS pgm_webhook_deliveries_due_idx ON pgm_webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';

-- Schema version 5: a dispatcher leases the delivery it sends (committed before the request goes
-- out, so no transaction stays open while a receiver answers) and records the outcome in another
-- short transaction; a lease that expired (its dispatcher died) is claimed again.
ALTER TABLE pgm_webhook_deliveries ADD COLUMN IF NOT EXISTS leased_until TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS pgm_webhook_deliveries_leased_idx ON pgm_webhook_deliveries (webhook_id, leased_until)
    WHERE status = 'pending' AND leased_until IS NOT NULL;

-- The webhook event of one history row: MLflow's mapping (a model tagged
-- mlflow.prompt.is_prompt=true is a prompt), NULL when MLflow has no event for the change.
-- Tags written in the transaction that created the model or version travel in the "created"
-- payload, as with MLflow's REST API: 'folded' tells them apart from changes without an event.
CREATE OR REPLACE FUNCTION pgm_webhook_event(p_action TEXT, p_name TEXT, p_version INTEGER,
                                             p_txid XID8, OUT event TEXT, OUT folded BOOLEAN)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    prompt BOOLEAN := EXISTS (SELECT 1 FROM pgm_registered_model_tags
                               WHERE name = p_name AND key = 'mlflow.prompt.is_prompt'
                                 AND lower(value) = 'true');
    m TEXT := CASE WHEN prompt THEN 'prompt' ELSE 'model_version' END;
BEGIN
    folded := false;
    event := CASE p_action
        WHEN 'registered_model_created' THEN
            CASE WHEN prompt THEN 'prompt.created' ELSE 'registered_model.created' END
        WHEN 'model_version_created' THEN
            CASE WHEN prompt THEN 'prompt_version.created' ELSE 'model_version.created' END
        WHEN 'registered_model_tag_set' THEN CASE WHEN prompt THEN 'prompt_tag.set' END
        WHEN 'registered_model_tag_deleted' THEN CASE WHEN prompt THEN 'prompt_tag.deleted' END
        WHEN 'model_version_tag_set' THEN
            CASE WHEN prompt THEN 'prompt_version_tag.set' ELSE 'model_version_tag.set' END
        WHEN 'model_version_tag_deleted' THEN
            CASE WHEN prompt THEN 'prompt_version_tag.deleted' ELSE 'model_version_tag.deleted' END
        WHEN 'alias_set' THEN
            CASE WHEN prompt THEN 'prompt_alias.created' ELSE 'model_version_alias.created' END
        WHEN 'alias_deleted' THEN
            CASE WHEN prompt THEN 'prompt_alias.deleted' ELSE 'model_version_alias.deleted' END
    END;
    IF p_action = 'registered_model_tag_set' THEN
        folded := EXISTS (SELECT 1 FROM pgm_history WHERE txid = p_txid AND name = p_name
                             AND action = 'registered_model_created');
    ELSIF p_action = 'model_version_tag_set' THEN
        folded := EXISTS (SELECT 1 FROM pgm_history WHERE txid = p_txid AND name = p_name
                             AND version = p_version AND action = 'model_version_created');
    END IF;
    IF folded THEN
        event := NULL;
    END IF;
END
$$;

-- Runs at commit (deferred), so the whole transaction is visible: the prompt tag written after
-- the model row, the tags of a new version, the final version number.
CREATE OR REPLACE FUNCTION pgm_webhooks_fan_out() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    e RECORD;
    n INTEGER;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgm_webhooks WHERE status = 'ACTIVE' AND deleted_timestamp IS NULL) THEN
        RETURN NULL;
    END IF;
    e := pgm_webhook_event(NEW.action, NEW.name, NEW.version, NEW.txid);
    IF e.event IS NOT NULL THEN
        INSERT INTO pgm_webhook_deliveries (history_id, webhook_id, event)
        SELECT NEW.id, w.webhook_id, e.event
          FROM pgm_webhooks w JOIN pgm_webhook_events ev USING (webhook_id)
         WHERE w.status = 'ACTIVE' AND w.deleted_timestamp IS NULL
           AND ev.entity || '.' || ev.action = e.event
        ON CONFLICT DO NOTHING;
    ELSIF NOT e.folded THEN
        INSERT INTO pgm_webhook_deliveries (history_id, webhook_id, event)
        SELECT NEW.id, w.webhook_id, 'pgmodels.' || NEW.action
          FROM pgm_webhooks w
         WHERE w.status = 'ACTIVE' AND w.deleted_timestamp IS NULL AND w.all_changes
        ON CONFLICT DO NOTHING;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('pgmodels_webhook_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;

-- A SECURITY DEFINER function must not resolve names through the caller's search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION pgm_webhooks_fan_out() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION pgm_webhook_event(TEXT, TEXT, INTEGER, XID8) '
                   'SET search_path = %I, pg_temp', current_schema());
    IF to_regclass('pgm_history') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS pgm_webhooks_fan_out ON pgm_history;
        CREATE CONSTRAINT TRIGGER pgm_webhooks_fan_out AFTER INSERT ON pgm_history
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgm_webhooks_fan_out();
    END IF;
END $$;

REVOKE ALL ON FUNCTION pgm_webhooks_fan_out() FROM PUBLIC;

UPDATE pgm_schema_info SET schema_version = GREATEST(schema_version, 5);
