"""Feature views: named groups of features served together, each backed by one source."""

from datetime import timedelta

from entities import item, user
from feast import FeatureView, Field
from feast.types import Array, Float32, Int32, Int64, String, UnixTimestamp
from sources import item_features_source, user_features_source, user_realtime_push

_COUNTS = [
    f"{kind}_{days}d"
    for kind in ("views", "clicks", "likes", "dislikes", "ratings", "purchases", "skips")
    for days in (1, 7, 30)
]

# What a user did over the last 1/7/30 days, how they rated, and which categories they like.
user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[
        *[Field(name=name, dtype=Int32) for name in _COUNTS],
        Field(name="events_30d", dtype=Int32),
        Field(name="like_ratio_30d", dtype=Float32),
        Field(name="dislike_ratio_30d", dtype=Float32),
        Field(name="mean_rating_30d", dtype=Float32),
        Field(name="days_active_30d", dtype=Int32),
        Field(name="last_event_at", dtype=UnixTimestamp),
        Field(name="affinity_categories", dtype=Array(String)),
        Field(name="affinity_shares", dtype=Array(Float32)),
    ],
    online=True,
    source=user_features_source,
    tags={"team": "recsys", "entity": "user"},
)

# How popular and well liked an item is lately, how old it is, and what it is.
item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(days=365),
    schema=[
        Field(name="popularity_1d", dtype=Int32),
        Field(name="popularity_7d", dtype=Int32),
        Field(name="popularity_30d", dtype=Int32),
        Field(name="like_ratio_30d", dtype=Float32),
        Field(name="mean_rating_30d", dtype=Float32),
        Field(name="age_days", dtype=Float32),
        Field(name="domain", dtype=String),
        Field(name="categories", dtype=Array(String)),
        Field(name="provider_id", dtype=String),
    ],
    online=True,
    source=item_features_source,
    tags={"team": "recsys", "entity": "item"},
)

# The user's live session: last items interacted with (newest first), events this session, last event time.
user_realtime = FeatureView(
    name="user_realtime",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[
        Field(name="recent_item_ids", dtype=Array(String)),
        Field(name="session_events", dtype=Int64),
        Field(name="last_event_ts", dtype=Int64),
    ],
    online=True,
    source=user_realtime_push,
    tags={"team": "recsys", "entity": "user", "freshness": "real-time"},
)
