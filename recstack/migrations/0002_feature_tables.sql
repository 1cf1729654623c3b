-- Feature tables: daily snapshots, keyed by EXTERNAL ids (the Feast entity values), so training can join them
-- point-in-time and materialization copies the latest row per entity into Redis.
-- event_timestamp = end of the day the snapshot describes (when its values became knowable).
CREATE TABLE IF NOT EXISTS user_features (
    user_id                text NOT NULL,
    event_timestamp        timestamptz NOT NULL,
    created                timestamptz NOT NULL DEFAULT now(),
    views_1d integer NOT NULL, views_7d integer NOT NULL, views_30d integer NOT NULL,
    clicks_1d integer NOT NULL, clicks_7d integer NOT NULL, clicks_30d integer NOT NULL,
    likes_1d integer NOT NULL, likes_7d integer NOT NULL, likes_30d integer NOT NULL,
    dislikes_1d integer NOT NULL, dislikes_7d integer NOT NULL, dislikes_30d integer NOT NULL,
    ratings_1d integer NOT NULL, ratings_7d integer NOT NULL, ratings_30d integer NOT NULL,
    purchases_1d integer NOT NULL, purchases_7d integer NOT NULL, purchases_30d integer NOT NULL,
    skips_1d integer NOT NULL, skips_7d integer NOT NULL, skips_30d integer NOT NULL,
    events_30d             integer NOT NULL,
    like_ratio_30d         real NOT NULL,   -- likes / events over 30 days
    dislike_ratio_30d      real NOT NULL,
    mean_rating_30d        real,            -- NULL when the user rated nothing
    days_active_30d        integer NOT NULL,
    last_event_at          timestamptz NOT NULL,
    affinity_categories    text[] NOT NULL, -- top categories by share of positive events (30 days)
    affinity_shares        real[] NOT NULL, -- parallel to affinity_categories, each in 0..1
    PRIMARY KEY (user_id, event_timestamp)
);
CREATE INDEX IF NOT EXISTS user_features_ts_idx ON user_features (event_timestamp);

CREATE TABLE IF NOT EXISTS item_features (
    item_id            text NOT NULL,
    event_timestamp    timestamptz NOT NULL,
    created            timestamptz NOT NULL DEFAULT now(),
    popularity_1d      integer NOT NULL,
    popularity_7d      integer NOT NULL,
    popularity_30d     integer NOT NULL,
    like_ratio_30d     real NOT NULL,
    mean_rating_30d    real,
    age_days           real NOT NULL,
    domain             text NOT NULL,
    categories         text[] NOT NULL,
    provider_id        text NOT NULL,
    PRIMARY KEY (item_id, event_timestamp)
);
CREATE INDEX IF NOT EXISTS item_features_ts_idx ON item_features (event_timestamp);

-- Incremental builds: events ingested up to this time are reflected in the table.
CREATE TABLE IF NOT EXISTS feature_watermarks (
    table_name text PRIMARY KEY,
    ingested_through timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
