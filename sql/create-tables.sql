-- The full schema: the models table, what MLflow's registry needs on top of it, and the
-- results tables of the training and predict examples. Idempotent.
--   psql -d your_database -f sql/create-tables.sql      (run from any directory)
\ir create_models_table.sql
\ir pgmodels_schema.sql
