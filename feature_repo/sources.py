"""Where feature values come from: Postgres tables built by `recstack features build`, and real-time pushes."""

from feast import Field, PushSource, RequestSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Int64, String

# Daily user snapshots (activity counts, ratios, category affinity), one row per user per active day.
user_features_source = PostgreSQLSource(
    name="user_features_source",
    table="user_features",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

# Daily item snapshots (popularity windows, like ratio, age, catalog attributes).
item_features_source = PostgreSQLSource(
    name="item_features_source",
    table="item_features",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

# The durable copy of each user's real-time state (written with every feedback event).
user_realtime_table = PostgreSQLSource(
    name="user_realtime_table",
    table="user_realtime",
    timestamp_field="event_timestamp",
)

# Real-time state pushed to the online store as feedback arrives (serving/feedback.py calls
# recstack.features.realtime.store_event, then push_state).
user_realtime_push = PushSource(name="user_realtime_push", batch_source=user_realtime_table)

# Facts known only when a request arrives: when, on which device, in which locale.
request_context = RequestSource(
    name="request_context",
    schema=[
        Field(name="hour_of_day", dtype=Int64),
        Field(name="day_of_week", dtype=Int64),
        Field(name="device", dtype=String),
        Field(name="locale", dtype=String),
        Field(name="request_ts", dtype=Int64),
    ],
)
