-- User features as daily snapshots for the days in [%(since)s, %(until)s), one row per user active that day.
-- Windows are RANGE frames over per-day aggregates, so a 30-day count reads 30 daily rows, not raw events.
-- Positive events (like, purchase, rating >= 4) define category affinity: each category's share of the user's
-- positives over the trailing 30 days, top 5 kept.
WITH daily AS (
    SELECT e.user_id, date_trunc('day', e.occurred_at) AS day,
        count(*) FILTER (WHERE e.event_type = 'view') AS views,
        count(*) FILTER (WHERE e.event_type = 'click') AS clicks,
        count(*) FILTER (WHERE e.event_type = 'like') AS likes,
        count(*) FILTER (WHERE e.event_type = 'dislike') AS dislikes,
        count(*) FILTER (WHERE e.event_type = 'rating') AS ratings,
        count(*) FILTER (WHERE e.event_type = 'purchase') AS purchases,
        count(*) FILTER (WHERE e.event_type = 'skip') AS skips,
        count(*) AS events,
        sum(e.value) FILTER (WHERE e.event_type = 'rating') AS rating_sum,
        max(e.occurred_at) AS last_at
    FROM events e
    WHERE e.occurred_at >= %(since)s::timestamptz - interval '30 days' AND e.occurred_at < %(until)s
    GROUP BY 1, 2
), win AS (
    SELECT user_id, day,
        sum(views) OVER w1 AS views_1d,
        sum(views) OVER w7 AS views_7d,
        sum(views) OVER w30 AS views_30d,
        sum(clicks) OVER w1 AS clicks_1d,
        sum(clicks) OVER w7 AS clicks_7d,
        sum(clicks) OVER w30 AS clicks_30d,
        sum(likes) OVER w1 AS likes_1d,
        sum(likes) OVER w7 AS likes_7d,
        sum(likes) OVER w30 AS likes_30d,
        sum(dislikes) OVER w1 AS dislikes_1d,
        sum(dislikes) OVER w7 AS dislikes_7d,
        sum(dislikes) OVER w30 AS dislikes_30d,
        sum(ratings) OVER w1 AS ratings_1d,
        sum(ratings) OVER w7 AS ratings_7d,
        sum(ratings) OVER w30 AS ratings_30d,
        sum(purchases) OVER w1 AS purchases_1d,
        sum(purchases) OVER w7 AS purchases_7d,
        sum(purchases) OVER w30 AS purchases_30d,
        sum(skips) OVER w1 AS skips_1d,
        sum(skips) OVER w7 AS skips_7d,
        sum(skips) OVER w30 AS skips_30d,
        sum(events) OVER w30 AS events_30d,
        sum(rating_sum) OVER w30 AS rating_sum_30d,
        count(*) OVER w30 AS days_active_30d,
        max(last_at) OVER w30 AS last_event_at
    FROM daily
    WINDOW w1 AS (PARTITION BY user_id ORDER BY day RANGE BETWEEN CURRENT ROW AND CURRENT ROW),
           w7 AS (PARTITION BY user_id ORDER BY day RANGE BETWEEN interval '6 days' PRECEDING AND CURRENT ROW),
           w30 AS (PARTITION BY user_id ORDER BY day RANGE BETWEEN interval '29 days' PRECEDING AND CURRENT ROW)
), positives AS (
    SELECT e.user_id, date_trunc('day', e.occurred_at) AS day, c.category, count(*) AS n
    FROM events e
    JOIN items i ON i.item_id = e.item_id
    CROSS JOIN LATERAL unnest(i.categories) AS c(category)
    WHERE (e.event_type IN ('like', 'purchase') OR (e.event_type = 'rating' AND e.value >= 4))
      AND e.occurred_at >= %(since)s::timestamptz - interval '30 days' AND e.occurred_at < %(until)s
    GROUP BY 1, 2, 3
), affinity_window AS (
    SELECT w.user_id, w.day, p.category, sum(p.n) AS n
    FROM win w
    JOIN positives p ON p.user_id = w.user_id AND p.day > w.day - interval '30 days' AND p.day <= w.day
    WHERE w.day >= %(since)s
    GROUP BY 1, 2, 3
), affinity_ranked AS (
    SELECT user_id, day, category, n::real / sum(n) OVER (PARTITION BY user_id, day) AS share,
        row_number() OVER (PARTITION BY user_id, day ORDER BY n DESC, category) AS rank
    FROM affinity_window
), affinity AS (
    SELECT user_id, day, array_agg(category ORDER BY rank) AS categories, array_agg(share ORDER BY rank) AS shares
    FROM affinity_ranked WHERE rank <= 5 GROUP BY 1, 2
)
INSERT INTO user_features (user_id, event_timestamp, views_1d, views_7d, views_30d, clicks_1d, clicks_7d, clicks_30d, likes_1d, likes_7d, likes_30d, dislikes_1d, dislikes_7d, dislikes_30d, ratings_1d, ratings_7d, ratings_30d, purchases_1d, purchases_7d, purchases_30d, skips_1d, skips_7d, skips_30d,
    events_30d, like_ratio_30d, dislike_ratio_30d, mean_rating_30d, days_active_30d, last_event_at,
    affinity_categories, affinity_shares)
SELECT u.external_id, w.day + interval '1 day', w.views_1d, w.views_7d, w.views_30d, w.clicks_1d, w.clicks_7d, w.clicks_30d, w.likes_1d, w.likes_7d, w.likes_30d, w.dislikes_1d, w.dislikes_7d, w.dislikes_30d, w.ratings_1d, w.ratings_7d, w.ratings_30d, w.purchases_1d, w.purchases_7d, w.purchases_30d, w.skips_1d, w.skips_7d, w.skips_30d,
    w.events_30d, w.likes_30d::real / w.events_30d, w.dislikes_30d::real / w.events_30d,
    (w.rating_sum_30d / nullif(w.ratings_30d, 0))::real, w.days_active_30d, w.last_event_at,
    coalesce(a.categories, '{}'), coalesce(a.shares, '{}')
FROM win w
JOIN users u ON u.user_id = w.user_id
LEFT JOIN affinity a ON a.user_id = w.user_id AND a.day = w.day
WHERE w.day >= %(since)s
ON CONFLICT (user_id, event_timestamp) DO UPDATE SET
    views_1d = EXCLUDED.views_1d,
    views_7d = EXCLUDED.views_7d,
    views_30d = EXCLUDED.views_30d,
    clicks_1d = EXCLUDED.clicks_1d,
    clicks_7d = EXCLUDED.clicks_7d,
    clicks_30d = EXCLUDED.clicks_30d,
    likes_1d = EXCLUDED.likes_1d,
    likes_7d = EXCLUDED.likes_7d,
    likes_30d = EXCLUDED.likes_30d,
    dislikes_1d = EXCLUDED.dislikes_1d,
    dislikes_7d = EXCLUDED.dislikes_7d,
    dislikes_30d = EXCLUDED.dislikes_30d,
    ratings_1d = EXCLUDED.ratings_1d,
    ratings_7d = EXCLUDED.ratings_7d,
    ratings_30d = EXCLUDED.ratings_30d,
    purchases_1d = EXCLUDED.purchases_1d,
    purchases_7d = EXCLUDED.purchases_7d,
    purchases_30d = EXCLUDED.purchases_30d,
    skips_1d = EXCLUDED.skips_1d,
    skips_7d = EXCLUDED.skips_7d,
    skips_30d = EXCLUDED.skips_30d,
    events_30d = EXCLUDED.events_30d,
    like_ratio_30d = EXCLUDED.like_ratio_30d,
    dislike_ratio_30d = EXCLUDED.dislike_ratio_30d,
    mean_rating_30d = EXCLUDED.mean_rating_30d,
    days_active_30d = EXCLUDED.days_active_30d,
    last_event_at = EXCLUDED.last_event_at,
    affinity_categories = EXCLUDED.affinity_categories,
    affinity_shares = EXCLUDED.affinity_shares,
    created = EXCLUDED.created;
