-- Item features as daily snapshots for the days in [%(since)s, %(until)s), one row per item with events that day.
WITH daily AS (
    SELECT e.item_id, date_trunc('day', e.occurred_at) AS day,
        count(*) AS events,
        count(*) FILTER (WHERE e.event_type = 'like') AS likes,
        count(*) FILTER (WHERE e.event_type = 'rating') AS ratings,
        sum(e.value) FILTER (WHERE e.event_type = 'rating') AS rating_sum
    FROM events e
    WHERE e.occurred_at >= %(since)s::timestamptz - interval '30 days' AND e.occurred_at < %(until)s
    GROUP BY 1, 2
), win AS (
    SELECT item_id, day,
        sum(events) OVER w1 AS popularity_1d,
        sum(events) OVER w7 AS popularity_7d,
        sum(events) OVER w30 AS popularity_30d,
        sum(likes) OVER w30 AS likes_30d,
        sum(ratings) OVER w30 AS ratings_30d,
        sum(rating_sum) OVER w30 AS rating_sum_30d
    FROM daily
    WINDOW w1 AS (PARTITION BY item_id ORDER BY day RANGE BETWEEN CURRENT ROW AND CURRENT ROW),
           w7 AS (PARTITION BY item_id ORDER BY day RANGE BETWEEN interval '6 days' PRECEDING AND CURRENT ROW),
           w30 AS (PARTITION BY item_id ORDER BY day RANGE BETWEEN interval '29 days' PRECEDING AND CURRENT ROW)
)
INSERT INTO item_features (item_id, event_timestamp, popularity_1d, popularity_7d, popularity_30d,
    like_ratio_30d, mean_rating_30d, age_days, domain, categories, provider_id)
SELECT i.external_id, w.day + interval '1 day', w.popularity_1d, w.popularity_7d, w.popularity_30d,
    w.likes_30d::real / w.popularity_30d, (w.rating_sum_30d / nullif(w.ratings_30d, 0))::real,
    greatest(0, extract(epoch FROM (w.day + interval '1 day' - i.created_at)) / 86400)::real,
    i.domain, i.categories, i.provider_id
FROM win w
JOIN items i ON i.item_id = w.item_id
WHERE w.day >= %(since)s
ON CONFLICT (item_id, event_timestamp) DO UPDATE SET
    popularity_1d = EXCLUDED.popularity_1d, popularity_7d = EXCLUDED.popularity_7d,
    popularity_30d = EXCLUDED.popularity_30d, like_ratio_30d = EXCLUDED.like_ratio_30d,
    mean_rating_30d = EXCLUDED.mean_rating_30d, age_days = EXCLUDED.age_days, domain = EXCLUDED.domain,
    categories = EXCLUDED.categories, provider_id = EXCLUDED.provider_id, created = EXCLUDED.created;
