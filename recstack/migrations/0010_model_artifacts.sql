-- Model artifacts readable from every node: the CatBoost bytes inside the registry (default), or an object-store
-- URI in `path` (RECSTACK_ARTIFACT_URI). Rows from before keep a local file path and no bytes.
ALTER TABLE models ADD COLUMN IF NOT EXISTS artifact bytea;
