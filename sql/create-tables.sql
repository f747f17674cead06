-- The full schema: the models table, what MLflow's registry needs on top of it, and the
-- results tables of the training and predict examples. Idempotent.
--   psql -d your_database -f sql/create-tables.sql      (run from any directory)
\ir create_models_table.sql
\ir pgmodels_schema.sql
\ir pgmodels_history.sql
\ir pgmodels_webhooks.sql
\ir pgmodels_artifacts.sql
\ir pgmodels_governance.sql
\ir pgmodels_privileges.sql

-- The examples (examples/): their training data, what each training run scored, and the
-- predictions, every result row naming the model version it came from.

-- One row per release of an economic indicator ("event"): what was expected, what came out,
-- and how the price moved in the hour after it. price_change NULL: not known yet (to predict).
CREATE TABLE IF NOT EXISTS event_observations (
    id BIGSERIAL PRIMARY KEY,
    event VARCHAR(255) NOT NULL,
    released_at TIMESTAMPTZ NOT NULL,
    consensus DOUBLE PRECISION NOT NULL,
    previous DOUBLE PRECISION NOT NULL,
    actual DOUBLE PRECISION NOT NULL,
    pre_volatility DOUBLE PRECISION NOT NULL,  -- realised volatility (%) in the day before
    price_change DOUBLE PRECISION,             -- % move in the hour after the release
    UNIQUE (event, released_at)
);

-- Classifiers predict whether the price goes up (1) or not (0) after a release.
CREATE TABLE IF NOT EXISTS classifier_results (
    id BIGSERIAL PRIMARY KEY,
    trained_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    event VARCHAR(255) NOT NULL,
    model_name VARCHAR(255) NOT NULL,
    model_version INTEGER NOT NULL,
    run_id VARCHAR(32),
    n_train INTEGER NOT NULL,
    n_test INTEGER NOT NULL,
    accuracy DOUBLE PRECISION,
    precision_up DOUBLE PRECISION,   -- of the predicted up moves, the share that went up
    recall_up DOUBLE PRECISION,      -- of the up moves, the share predicted
    f1 DOUBLE PRECISION,
    roc_auc DOUBLE PRECISION
);

-- Regressions predict the price change itself; the directional columns score its sign.
CREATE TABLE IF NOT EXISTS regression_results (
    id BIGSERIAL PRIMARY KEY,
    trained_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    event VARCHAR(255) NOT NULL,
    model_name VARCHAR(255) NOT NULL,
    model_version INTEGER NOT NULL,
    run_id VARCHAR(32),
    n_train INTEGER NOT NULL,
    n_test INTEGER NOT NULL,
    mae DOUBLE PRECISION,
    rmse DOUBLE PRECISION,
    r2 DOUBLE PRECISION,
    directional_accuracy DOUBLE PRECISION,  -- share of releases where the predicted sign was right
    up_precision DOUBLE PRECISION,          -- of the predicted up moves, the share that went up
    down_precision DOUBLE PRECISION         -- of the predicted down moves, the share that went down
);

CREATE TABLE IF NOT EXISTS predictions (
    id BIGSERIAL PRIMARY KEY,
    predicted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    event VARCHAR(255) NOT NULL,
    released_at TIMESTAMPTZ NOT NULL,
    model_name VARCHAR(255) NOT NULL,
    model_version INTEGER NOT NULL,
    model_type VARCHAR(50) NOT NULL,
    prediction DOUBLE PRECISION NOT NULL  -- regression: % change; classifier_binary: 1 = up
);
CREATE INDEX IF NOT EXISTS predictions_event_idx ON predictions (event, released_at);
