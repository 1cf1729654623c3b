-- Item and user vectors for retrieval (pgvector). Collaborative vectors come from the torch model (inner product
-- search); content vectors from the sentence encoder (cosine). Item rows carry the filterable fields so domain,
-- category and provider filters run inside the HNSW query (with hnsw.iterative_scan, filtered queries still fill k).
CREATE TABLE IF NOT EXISTS item_vectors (
    item_id      bigint PRIMARY KEY,
    external_id  text NOT NULL UNIQUE,
    domain       text NOT NULL,
    provider_id  text NOT NULL,
    categories   text[] NOT NULL DEFAULT '{}',
    popularity   real NOT NULL DEFAULT 0,          -- weighted interactions in the model's training window
    cf           vector(64),                       -- NULL for items without interactions (cold start)
    content      vector(384),
    content_hash text,                             -- sha256 of the encoded text: re-encode only what changed
    model_version text
);
CREATE INDEX IF NOT EXISTS item_vectors_cf_hnsw ON item_vectors USING hnsw (cf vector_ip_ops);
CREATE INDEX IF NOT EXISTS item_vectors_content_hnsw ON item_vectors USING hnsw (content vector_cosine_ops);
CREATE INDEX IF NOT EXISTS item_vectors_domain_idx ON item_vectors (domain);

CREATE TABLE IF NOT EXISTS user_vectors (
    user_id      bigint PRIMARY KEY,
    external_id  text NOT NULL UNIQUE,
    cf           vector(64) NOT NULL,
    model_version text
);

-- Serving impressions: every slate returned, for A/B reports joined with feedback by request_id.
CREATE TABLE IF NOT EXISTS impressions (
    request_id   text PRIMARY KEY,
    user_id      text NOT NULL,
    experiment   text,
    variant      text,
    model_version text,
    item_ids     text[] NOT NULL,
    degraded     boolean NOT NULL DEFAULT false,
    served_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS impressions_variant_idx ON impressions (experiment, variant);
