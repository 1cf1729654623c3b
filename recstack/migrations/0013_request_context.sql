-- The request context of each slate served (POST /recommend's `context`: device, locale, timestamp), so the ranker's
-- training rows carry the device and locale of the request a feedback event answered (events.context->>'request_id'
-- = impressions.request_id; training/interactions.py). Slates logged before this migration have none ('{}').
ALTER TABLE impressions ADD COLUMN IF NOT EXISTS context jsonb NOT NULL DEFAULT '{}'::jsonb;
