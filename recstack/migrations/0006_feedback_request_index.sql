-- A/B reports join feedback to the slate it answered (events.context->>'request_id' = impressions.request_id).
CREATE INDEX IF NOT EXISTS events_request_id_idx ON events ((context->>'request_id'))
    WHERE context ? 'request_id';
