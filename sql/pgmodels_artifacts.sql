-- Files in the database: run artifacts, LoggedModel files, and the files of versions too big for
-- one model_binary value. Additive and idempotent; needs sql/pgmodels_schema.sql first.
--   psql -d your_database -f sql/pgmodels_artifacts.sql
--
-- A file's bytes are a blob: rows of pgm_blob_pieces (at most 32 MiB each, so any size fits).
-- A blob is referenced by an artifact (pgm_artifacts) and/or by a version's file
-- (pgm_version_files); registering a LoggedModel whose files are here references the same
-- blobs (no byte is copied), and a blob goes when the last reference to it goes.

CREATE TABLE IF NOT EXISTS pgm_blobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
    sha256 CHAR(64) NOT NULL,                 -- of the whole file, checked on every read
    crc32 BIGINT NOT NULL,                    -- what a zip entry of the file records (versions' zips)
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pgm_blob_pieces (
    blob_id BIGINT NOT NULL REFERENCES pgm_blobs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL CHECK (seq >= 0),    -- 0, 1, 2 ... in file order
    data BYTEA NOT NULL,
    PRIMARY KEY (blob_id, seq)
);
-- Pieces are read in slices with substring(): uncompressed TOAST makes that direct access.
ALTER TABLE pgm_blob_pieces ALTER COLUMN data SET STORAGE EXTERNAL;

-- One row per artifact file. path is the whole key below the database root, e.g.
-- '1/<run id>/artifacts/model/MLmodel' for pgmodels-artifacts:/1/<run id>/artifacts; "C"
-- collation so that a directory is one index range.
CREATE TABLE IF NOT EXISTS pgm_artifacts (
    path TEXT COLLATE "C" PRIMARY KEY,
    blob_id BIGINT NOT NULL REFERENCES pgm_blobs (id),
    size_bytes BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS pgm_artifacts_blob_idx ON pgm_artifacts (blob_id);

-- The files of a version stored as files (models.format = 'files'): path is relative to the
-- model directory (MLmodel at its root). The version's model_binary then holds only a short
-- text saying so (never a zip, never a pickle).
CREATE TABLE IF NOT EXISTS pgm_version_files (
    name VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    path TEXT COLLATE "C" NOT NULL,
    blob_id BIGINT NOT NULL REFERENCES pgm_blobs (id),
    size_bytes BIGINT NOT NULL,
    PRIMARY KEY (name, version, path),
    FOREIGN KEY (name, version) REFERENCES models (name, version)
        ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS pgm_version_files_blob_idx ON pgm_version_files (blob_id);

-- A blob nobody references any more is deleted with its pieces: when an artifact is deleted or
-- overwritten (mlflow gc, log_artifact to the same path) or a version is deleted. A version
-- made from a LoggedModel keeps the blobs its run's deletion would otherwise free.
CREATE OR REPLACE FUNCTION pgm_drop_orphan_blob() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.blob_id = OLD.blob_id THEN
        RETURN NULL;
    END IF;
    DELETE FROM pgm_blobs b WHERE b.id = OLD.blob_id
        AND NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE a.blob_id = OLD.blob_id)
        AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = OLD.blob_id);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS pgm_artifacts_drop_orphan_blob ON pgm_artifacts;
CREATE TRIGGER pgm_artifacts_drop_orphan_blob AFTER DELETE OR UPDATE OF blob_id ON pgm_artifacts
    FOR EACH ROW EXECUTE FUNCTION pgm_drop_orphan_blob();
DROP TRIGGER IF EXISTS pgm_version_files_drop_orphan_blob ON pgm_version_files;
CREATE TRIGGER pgm_version_files_drop_orphan_blob AFTER DELETE ON pgm_version_files
    FOR EACH ROW EXECUTE FUNCTION pgm_drop_orphan_blob();

UPDATE pgm_schema_info SET schema_version = GREATEST(schema_version, 5);
