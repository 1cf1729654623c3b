-- Catalog and event store. External ids are strings (1..128 chars); the bigint keys stay inside the stores.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS users (
    user_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text NOT NULL UNIQUE CHECK (length(external_id) BETWEEN 1 AND 128),
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS items (
    item_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text NOT NULL UNIQUE CHECK (length(external_id) BETWEEN 1 AND 128),
    domain      text NOT NULL,
    title       text NOT NULL,
    categories  text[] NOT NULL DEFAULT '{}',
    description text NOT NULL DEFAULT '',
    -- who supplies the item; exposure fairness is measured across providers
    provider_id text NOT NULL,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS items_domain_idx ON items (domain);
CREATE INDEX IF NOT EXISTS items_provider_idx ON items (provider_id);
CREATE INDEX IF NOT EXISTS items_categories_idx ON items USING gin (categories);

-- No foreign keys on events: bulk loads resolve external ids by join (unknown ids are rejected there), and the
-- Great Expectations suites check referential integrity of whatever else writes here.
CREATE TABLE IF NOT EXISTS events (
    event_pk    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    text NOT NULL UNIQUE CHECK (length(event_id) BETWEEN 1 AND 128),
    user_id     bigint NOT NULL,
    item_id     bigint NOT NULL,
    event_type  text NOT NULL,
    value       real,
    occurred_at timestamptz NOT NULL,
    context     jsonb NOT NULL DEFAULT '{}'::jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
-- user history (last-N, seen sets, user features), item popularity windows, incremental feature builds
CREATE INDEX IF NOT EXISTS events_user_time_idx ON events (user_id, occurred_at);
CREATE INDEX IF NOT EXISTS events_item_time_idx ON events (item_id, occurred_at);
CREATE INDEX IF NOT EXISTS events_time_idx ON events (occurred_at);
