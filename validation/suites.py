"""Great Expectations suites for the catalog, the events and the feature tables.

Column rules use GX's own expectations on table assets. Rules that span rows or tables (orphans, duplicates,
timestamps in the future, freshness, coverage) are computed by one aggregate query per table (a query asset with a
single row of named metrics) and checked with ``ExpectColumnValuesToBeBetween``: one scan of 5M events instead of
one per rule, and each failure still names its rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import great_expectations.expectations as gxe

from recstack.ingest.records import DOMAINS, EVENT_TYPES, MAX_ID_LEN


@dataclass
class SuiteSpec:
    """One table's expectations: column rules on the table, metric rules on its aggregate query."""

    name: str
    table: str
    column_rules: list[gxe.Expectation] = field(default_factory=list)
    metrics_sql: str | None = None
    metric_bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    rows_sql: dict[str, str] = field(default_factory=dict)  # extra query assets: name -> query
    rows_rules: dict[str, list[gxe.Expectation]] = field(default_factory=dict)


def _id_rules(column: str) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=column),
        gxe.ExpectColumnValuesToBeUnique(column=column),
        gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, max_value=MAX_ID_LEN),
    ]


def catalog_specs() -> list[SuiteSpec]:
    return [
        SuiteSpec(
            name="users",
            table="users",
            column_rules=[*_id_rules("external_id"), gxe.ExpectTableRowCountToBeBetween(min_value=1)],
        ),
        SuiteSpec(
            name="items",
            table="items",
            column_rules=[
                *_id_rules("external_id"),
                gxe.ExpectTableRowCountToBeBetween(min_value=1),
                gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS)),
                gxe.ExpectColumnValuesToNotBeNull(column="provider_id"),
                gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1),
            ],
        ),
        SuiteSpec(
            name="events",
            table="events",
            column_rules=[
                gxe.ExpectColumnValuesToNotBeNull(column="event_id"),
                gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
                gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
                gxe.ExpectColumnValuesToNotBeNull(column="occurred_at"),
                gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
                gxe.ExpectTableRowCountToBeBetween(min_value=1),
            ],
            rows_sql={"rating_values": "SELECT value FROM events WHERE event_type = 'rating'"},
            rows_rules={
                "rating_values": [
                    gxe.ExpectColumnValuesToNotBeNull(column="value"),
                    gxe.ExpectColumnValuesToBeBetween(column="value", min_value=1, max_value=5),
                ]
            },
            metrics_sql="""
                SELECT
                  count(*) FILTER (WHERE e.occurred_at > now() + interval '5 minutes') AS events_in_future,
                  count(*) FILTER (WHERE e.occurred_at < '1990-01-01') AS events_before_1990,
                  count(*) FILTER (WHERE u.user_id IS NULL) AS events_with_unknown_user,
                  count(*) FILTER (WHERE i.item_id IS NULL) AS events_with_unknown_item,
                  count(*) - count(DISTINCT e.event_id) AS duplicate_event_ids
                FROM events e
                LEFT JOIN users u ON u.user_id = e.user_id
                LEFT JOIN items i ON i.item_id = e.item_id""",
            metric_bounds={
                "events_in_future": (0, 0),
                "events_before_1990": (0, 0),
                "events_with_unknown_user": (0, 0),
                "events_with_unknown_item": (0, 0),
                "duplicate_event_ids": (0, 0),
            },
        ),
    ]


def feature_specs() -> list[SuiteSpec]:
    counts = ["views_30d", "clicks_30d", "likes_30d", "dislikes_30d", "ratings_30d", "events_30d"]
    return [
        SuiteSpec(
            name="user_features",
            table="user_features",
            column_rules=[
                gxe.ExpectTableRowCountToBeBetween(min_value=1),
                *[gxe.ExpectColumnMinToBeBetween(column=c, min_value=0) for c in counts],
                gxe.ExpectColumnValuesToBeBetween(column="like_ratio_30d", min_value=0, max_value=1),
                gxe.ExpectColumnValuesToBeBetween(column="dislike_ratio_30d", min_value=0, max_value=1),
                gxe.ExpectColumnValuesToBeBetween(column="mean_rating_30d", min_value=1, max_value=5),
                gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
                gxe.ExpectColumnValuesToNotBeNull(column="like_ratio_30d"),
            ],
            metrics_sql="""
                SELECT
                  (SELECT count(DISTINCT e.user_id) FROM events e)
                    - (SELECT count(DISTINCT f.user_id) FROM user_features f) AS active_users_without_features,
                  extract(epoch FROM (SELECT max(occurred_at) FROM events)
                    - (SELECT max(event_timestamp) FROM user_features)) / 86400 AS days_behind_events""",
            metric_bounds={"active_users_without_features": (0, 0), "days_behind_events": (-1, 1)},
        ),
        SuiteSpec(
            name="item_features",
            table="item_features",
            column_rules=[
                gxe.ExpectTableRowCountToBeBetween(min_value=1),
                gxe.ExpectColumnMinToBeBetween(column="popularity_30d", min_value=1),
                gxe.ExpectColumnValuesToBeBetween(column="like_ratio_30d", min_value=0, max_value=1),
                gxe.ExpectColumnValuesToBeBetween(column="mean_rating_30d", min_value=1, max_value=5),
                gxe.ExpectColumnValuesToBeBetween(column="age_days", min_value=0),
                gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS)),
                gxe.ExpectColumnValuesToNotBeNull(column="provider_id"),
            ],
            metrics_sql="""
                SELECT
                  (SELECT count(DISTINCT e.item_id) FROM events e)
                    - (SELECT count(DISTINCT f.item_id) FROM item_features f) AS active_items_without_features,
                  extract(epoch FROM (SELECT max(occurred_at) FROM events)
                    - (SELECT max(event_timestamp) FROM item_features)) / 86400 AS days_behind_events""",
            metric_bounds={"active_items_without_features": (0, 0), "days_behind_events": (-1, 1)},
        ),
    ]


def all_specs() -> dict[str, SuiteSpec]:
    return {spec.name: spec for spec in [*catalog_specs(), *feature_specs()]}
