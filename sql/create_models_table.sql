-- The models table: one row per model version, the model itself in model_binary.
-- This is the seed's table exactly; it is safe to run more than once.
--   psql -d your_database -f sql/create_models_table.sql
CREATE TABLE IF NOT EXISTS models (
    id SERIAL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    model_type VARCHAR(50) NOT NULL, -- 'classifier_binary', 'regression', 'vectorizer'
    event VARCHAR(255) NOT NULL,
    model_binary BYTEA NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    is_active BOOLEAN DEFAULT TRUE,
    UNIQUE(name, version)
);
