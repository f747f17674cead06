-- (filled in by the history work; idempotent, run after pgmodels_schema.sql)
SELECT 1;
