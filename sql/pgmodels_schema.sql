-- What MLflow's model registry needs on top of the models table. Additive only: extra
-- columns on models and pgm_* tables (no clash with MLflow's own tables in the same database).
-- Idempotent; needs sql/create_models_table.sql first.
--   psql -d your_database -f sql/create_models_table.sql -f sql/pgmodels_schema.sql

-- Registered models. next_version is the per-name counter: a registration locks this row,
-- takes the number and bumps it in the same transaction, so numbers are gap-free and never
-- reused (a rolled-back registration rolls the counter back too).
CREATE TABLE IF NOT EXISTS pgm_registered_models (
    name VARCHAR(255) PRIMARY KEY,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_version INTEGER NOT NULL DEFAULT 1
);

ALTER TABLE models ADD COLUMN IF NOT EXISTS stage VARCHAR(20) NOT NULL DEFAULT 'None';
ALTER TABLE models ADD COLUMN IF NOT EXISTS description TEXT;
ALTER TABLE models ADD COLUMN IF NOT EXISTS source TEXT;
ALTER TABLE models ADD COLUMN IF NOT EXISTS run_id VARCHAR(32);
ALTER TABLE models ADD COLUMN IF NOT EXISTS run_link TEXT;
ALTER TABLE models ADD COLUMN IF NOT EXISTS model_id VARCHAR(64);
ALTER TABLE models ADD COLUMN IF NOT EXISTS user_id VARCHAR(255);
ALTER TABLE models ADD COLUMN IF NOT EXISTS last_updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- 'mlflow-zip': a zip of the MLflow model directory; 'joblib': a raw file-era joblib blob;
-- 'none': no files (prompts). NULL on rows written by other code: detected on read.
ALTER TABLE models ADD COLUMN IF NOT EXISTS format VARCHAR(16);
ALTER TABLE models ADD COLUMN IF NOT EXISTS sha256 CHAR(64);
ALTER TABLE models ADD COLUMN IF NOT EXISTS size_bytes BIGINT;

-- Models are zipped (compressed there when it pays); PostgreSQL's own compression would make
-- the chunked reads quadratic. Applies to values written from now on.
ALTER TABLE models ALTER COLUMN model_binary SET STORAGE EXTERNAL;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'pgm_models_stage_check') THEN
        ALTER TABLE models ADD CONSTRAINT pgm_models_stage_check
            CHECK (stage IN ('None', 'Staging', 'Production'));
    END IF;
END $$;

-- Every name in models is a registered model, also for rows inserted by plain SQL.
-- A row with a version <= 0 is a registration in progress (the store writes the row under a
-- placeholder number and numbers it at the end): its registered model exists already, and
-- leaving its row alone here keeps it unlocked during the upload.
CREATE OR REPLACE FUNCTION pgm_models_register_name() RETURNS trigger AS $$
BEGIN
    IF NEW.version <= 0 THEN
        RETURN NEW;
    END IF;
    INSERT INTO pgm_registered_models (name, next_version)
    VALUES (NEW.name, NEW.version + 1)
    ON CONFLICT (name) DO UPDATE
        SET next_version = GREATEST(pgm_registered_models.next_version, EXCLUDED.next_version),
            last_updated_at = now();
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS pgm_models_register_name ON models;
CREATE TRIGGER pgm_models_register_name BEFORE INSERT ON models
    FOR EACH ROW EXECUTE FUNCTION pgm_models_register_name();

INSERT INTO pgm_registered_models (name, next_version)
SELECT name, max(version) + 1 FROM models GROUP BY name
ON CONFLICT (name) DO UPDATE
    SET next_version = GREATEST(pgm_registered_models.next_version, EXCLUDED.next_version);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'pgm_models_name_fkey') THEN
        ALTER TABLE models ADD CONSTRAINT pgm_models_name_fkey FOREIGN KEY (name)
            REFERENCES pgm_registered_models (name) ON UPDATE CASCADE ON DELETE CASCADE;
    END IF;
END $$;

-- latest = highest active version: one index probe per name and stage, however many versions.
DROP INDEX IF EXISTS pgm_models_active_idx;
CREATE INDEX IF NOT EXISTS pgm_models_latest_idx ON models (name, stage, version DESC) WHERE is_active IS NOT FALSE;
CREATE INDEX IF NOT EXISTS pgm_models_archived_idx ON models (name, version DESC) WHERE is_active IS FALSE;
CREATE INDEX IF NOT EXISTS pgm_models_run_id_idx ON models (run_id);

CREATE TABLE IF NOT EXISTS pgm_registered_model_tags (
    name VARCHAR(255) NOT NULL REFERENCES pgm_registered_models (name)
        ON UPDATE CASCADE ON DELETE CASCADE,
    key VARCHAR(250) NOT NULL,
    value TEXT,
    PRIMARY KEY (name, key)
);

-- Tags of a version. The tags 'event' and 'model_type' are not here: they are the
-- models.event and models.model_type columns.
CREATE TABLE IF NOT EXISTS pgm_model_version_tags (
    name VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    key VARCHAR(250) NOT NULL,
    value TEXT,
    PRIMARY KEY (name, version, key),
    FOREIGN KEY (name, version) REFERENCES models (name, version)
        ON UPDATE CASCADE ON DELETE CASCADE
);

-- search_model_versions("tags.k = 'v'"): the versions with that tag value, without reading every
-- tag. A hash index: a value can be up to 100,000 characters, more than a btree entry holds.
CREATE INDEX IF NOT EXISTS pgm_model_version_tags_value_idx ON pgm_model_version_tags USING hash (value);

CREATE TABLE IF NOT EXISTS pgm_aliases (
    name VARCHAR(255) NOT NULL,
    alias VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES models (name, version)
        ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS pgm_schema_info (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    schema_version INTEGER NOT NULL
);
INSERT INTO pgm_schema_info (schema_version) VALUES (3)
ON CONFLICT (id) DO UPDATE SET schema_version = GREATEST(pgm_schema_info.schema_version, 3);
