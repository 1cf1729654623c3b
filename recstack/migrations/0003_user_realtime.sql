-- Durable real-time state per user (the batch source of Feast's user_realtime push view): the last items the user
-- interacted with, newest first, events in the current session, and the last event's time.
CREATE TABLE IF NOT EXISTS user_realtime (
    user_id         text PRIMARY KEY,
    event_timestamp timestamptz NOT NULL,
    recent_item_ids text[] NOT NULL DEFAULT '{}',
    session_events  bigint NOT NULL DEFAULT 0,
    last_event_ts   bigint NOT NULL
);
