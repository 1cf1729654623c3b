-- Model registry: every trained ranker, stored as a CatBoost .cbm file (never pickle) with its checksum.
CREATE TABLE IF NOT EXISTS models (
    version       text PRIMARY KEY,
    kind          text NOT NULL DEFAULT 'ranker',
    path          text NOT NULL,
    sha256        text NOT NULL CHECK (length(sha256) = 64),
    features      jsonb NOT NULL,
    params        jsonb NOT NULL,
    metrics       jsonb NOT NULL DEFAULT '{}'::jsonb,
    data_window   jsonb NOT NULL DEFAULT '{}'::jsonb,
    code_revision text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Promotion history: the newest row per kind is the promoted model; rollback re-promotes the previous one.
CREATE TABLE IF NOT EXISTS model_promotions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL DEFAULT 'ranker',
    version     text NOT NULL REFERENCES models (version),
    promoted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS model_promotions_kind_idx ON model_promotions (kind, id DESC);
