-- Feast's registry (feature definitions and materialization intervals) lives in this database, in its own schema, so
-- `feast apply` on a laptop and every replica and task on every Ray node read the same definitions
-- (feature_repo/feature_store.yaml: registry_type sql). Feast creates its tables here on first use.
CREATE SCHEMA IF NOT EXISTS feast;
