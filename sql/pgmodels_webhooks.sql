-- (filled in by the webhooks work; idempotent, run after pgmodels_schema.sql)
SELECT 1;
