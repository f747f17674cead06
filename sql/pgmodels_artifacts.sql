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

-- Each file once: a file logged again with the same bytes references the blob already there
-- (pieces.py: found by this index, its pieces re-hashed by PostgreSQL and compared with the new
-- file's before it is used). Not unique: a database written before this index may hold the same
-- bytes twice, and a blob whose pieces were damaged is passed over, not reused.
CREATE INDEX IF NOT EXISTS pgm_blobs_content_idx ON pgm_blobs (sha256, size_bytes);

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
-- The blobs are locked (in id order, so two deleters cannot deadlock) before their references
-- are counted: of two transactions dropping the last two references to one blob at once (a
-- 'files' version and its run's files), the second waits for the first and then sees its delete
-- (each statement of a READ COMMITTED function takes a new snapshot), so one of them frees it.
CREATE OR REPLACE FUNCTION pgm_drop_orphan_blobs() RETURNS trigger AS $$
BEGIN
    PERFORM 1 FROM pgm_blobs b WHERE b.id IN (SELECT blob_id FROM old_rows) ORDER BY b.id FOR UPDATE;
    DELETE FROM pgm_blobs b WHERE b.id IN (SELECT blob_id FROM old_rows)
        AND NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE a.blob_id = b.id)
        AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = b.id);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS pgm_artifacts_drop_orphan_blob ON pgm_artifacts;
DROP TRIGGER IF EXISTS pgm_version_files_drop_orphan_blob ON pgm_version_files;
DROP FUNCTION IF EXISTS pgm_drop_orphan_blob();
DROP TRIGGER IF EXISTS pgm_artifacts_delete_drops_orphans ON pgm_artifacts;
CREATE TRIGGER pgm_artifacts_delete_drops_orphans AFTER DELETE ON pgm_artifacts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pgm_drop_orphan_blobs();
DROP TRIGGER IF EXISTS pgm_artifacts_update_drops_orphans ON pgm_artifacts;
CREATE TRIGGER pgm_artifacts_update_drops_orphans AFTER UPDATE ON pgm_artifacts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pgm_drop_orphan_blobs();
DROP TRIGGER IF EXISTS pgm_version_files_delete_drops_orphans ON pgm_version_files;
CREATE TRIGGER pgm_version_files_delete_drops_orphans AFTER DELETE ON pgm_version_files
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pgm_drop_orphan_blobs();

-- Blobs referenced by nothing: none, unless a release before schema version 5 leaked them.
CREATE OR REPLACE FUNCTION pgm_orphan_blob_count() RETURNS BIGINT AS $$
    SELECT count(*) FROM pgm_blobs b
    WHERE NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE a.blob_id = b.id)
      AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = b.id)
$$ LANGUAGE sql STABLE;

-- Deletes the blobs referenced by nothing (run by mlflow gc); returns how many went. A blob
-- being referenced right now is locked by that transaction's foreign key check and skipped;
-- the others are locked first, so nothing can start referencing them while they are deleted.
CREATE OR REPLACE FUNCTION pgm_sweep_orphan_blobs() RETURNS BIGINT AS $$
DECLARE
    candidates BIGINT[];
    gone BIGINT;
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO candidates FROM (
        SELECT b.id FROM pgm_blobs b
        WHERE NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE a.blob_id = b.id)
          AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = b.id)
        ORDER BY b.id FOR UPDATE SKIP LOCKED) c;
    DELETE FROM pgm_blobs b WHERE b.id = ANY (candidates)
        AND NOT EXISTS (SELECT 1 FROM pgm_artifacts a WHERE a.blob_id = b.id)
        AND NOT EXISTS (SELECT 1 FROM pgm_version_files f WHERE f.blob_id = b.id);
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END
$$ LANGUAGE plpgsql;

-- A path is a file or a directory, never both (as on a file system): a new artifact may not lie
-- below a file ('fd/a' stored, 'fd/a/b' refused) nor be a directory that has files ('fd/a/b'
-- stored, 'fd/a' refused). SQLSTATE PGM01 names the clash. Writers of one area serialize on
-- advisory locks taken before the check and held until commit, so two concurrent writers cannot
-- both pass it: any two clashing paths share their first three components, or the shorter one
-- has fewer and its writer takes exclusively the lock the other takes shared.
-- Takes the transaction advisory locks a writer of ``path`` holds until commit (see below).
-- store() takes them for all its paths before it claims existing blobs, so that every writer
-- takes path locks before blob locks (no deadlock with an overwrite freeing the same blob).
CREATE OR REPLACE FUNCTION pgm_lock_artifact_path(path TEXT) RETURNS void AS $$
DECLARE
    parts TEXT[] := string_to_array(path, '/');
    n INTEGER := cardinality(parts);
BEGIN
    FOR i IN 1 .. least(n, 3) LOOP
        IF i = least(n, 3) THEN
            PERFORM pg_advisory_xact_lock(1885826413, hashtext(array_to_string(parts[1:i], '/')));
        ELSE
            PERFORM pg_advisory_xact_lock_shared(1885826413, hashtext(array_to_string(parts[1:i], '/')));
        END IF;
    END LOOP;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION pgm_artifact_path_check() RETURNS trigger AS $$
DECLARE
    parts TEXT[] := string_to_array(NEW.path, '/');
    n INTEGER := cardinality(parts);
    found TEXT;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.path = OLD.path THEN
        RETURN NEW;
    END IF;
    PERFORM pgm_lock_artifact_path(NEW.path);
    SELECT a.path INTO found FROM pgm_artifacts a
        WHERE a.path = ANY (ARRAY(SELECT array_to_string(parts[1:i], '/') FROM generate_series(1, n - 1) i))
        LIMIT 1;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PGM01', MESSAGE = 'artifact path clash', DETAIL = NEW.path,
            HINT = found || ' is a file';
    END IF;
    SELECT a.path INTO found FROM pgm_artifacts a
        WHERE a.path >= NEW.path || '/' AND a.path < NEW.path || '0' LIMIT 1;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PGM01', MESSAGE = 'artifact path clash', DETAIL = NEW.path,
            HINT = NEW.path || ' is a directory holding ' || found;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS pgm_artifacts_path_check ON pgm_artifacts;
CREATE TRIGGER pgm_artifacts_path_check BEFORE INSERT OR UPDATE OF path ON pgm_artifacts
    FOR EACH ROW EXECUTE FUNCTION pgm_artifact_path_check();

UPDATE pgm_schema_info SET schema_version = GREATEST(schema_version, 5);
