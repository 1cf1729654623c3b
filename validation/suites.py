"""Great Expectations suites for the catalog, the events and the feature tables.

Column rules use GX's own expectations on table assets. Rules that span rows or tables (orphans, duplicates,
freshness, coverage) and the events' row rules (times, rating values: ``recstack.ingest.rules``, which the importers
apply too) are computed by one aggregate query per table (a query asset with a single row of named metrics) and
checked with ``ExpectColumnValuesToBeBetween``: one scan of 5M events instead of one per rule, and each failure still
names its rule. A metric counted over rows has its condition in ``row_conditions``, so the gate can list those rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import great_expectations.expectations as gxe

from recstack.ingest.records import DOMAINS, EVENT_TYPES, MAX_ID_LEN
from recstack.ingest.rules import EVENT_ROW_RULES, RATING_MAX, RATING_MIN

EVENTS_JOINED = "events e LEFT JOIN users u ON u.user_id = e.user_id LEFT JOIN items i ON i.item_id = e.item_id"
# What `recstack validate --show-rows` prints of an offending event: its ids (the stores' key when unknown) and values.
EVENT_ROW_COLUMNS = (
    "e.event_id, coalesce(u.external_id, 'unknown key ' || e.user_id) AS user_id, "
    "coalesce(i.external_id, 'unknown key ' || e.item_id) AS item_id, e.event_type, e.value, e.occurred_at"
)
# Each metric of the events query that counts rows: its condition over EVENTS_JOINED.
EVENT_ROW_CONDITIONS = {
    **{rule.name: rule.condition for rule in EVENT_ROW_RULES},
    "events_with_unknown_user": "u.user_id IS NULL",
    "events_with_unknown_item": "i.item_id IS NULL",
}


@dataclass
class SuiteSpec:
    """One table's expectations: column rules on the table, metric rules on its aggregate query."""

    name: str
    table: str
    column_rules: list[gxe.Expectation] = field(default_factory=list)
    metrics_sql: str | None = None
    metric_bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # Metrics that count offending rows: metric -> SQL condition over ``rows_from``, whose ``row_columns`` the gate
    # shows for a failed metric (`recstack validate --show-rows`).
    rows_from: str | None = None
    row_columns: str = "*"
    row_conditions: dict[str, str] = field(default_factory=dict)


def _id_rules(column: str) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=column),
        gxe.ExpectColumnValuesToBeUnique(column=column),
        gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, max_value=MAX_ID_LEN),
    ]


def _events_metrics_sql() -> str:
    """One scan of the events counting the rows that break each row rule, and the duplicate ids."""
    counts = [f"count(*) FILTER (WHERE {c}) AS {name}" for name, c in EVENT_ROW_CONDITIONS.items()]
    counts.append("count(*) - count(DISTINCT e.event_id) AS duplicate_event_ids")
    return f"SELECT {', '.join(counts)} FROM {EVENTS_JOINED}"  # noqa: S608 (constant SQL fragments only)


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
            metrics_sql=_events_metrics_sql(),
            metric_bounds={**{name: (0, 0) for name in EVENT_ROW_CONDITIONS}, "duplicate_event_ids": (0, 0)},
            rows_from=EVENTS_JOINED,
            row_columns=EVENT_ROW_COLUMNS,
            row_conditions=EVENT_ROW_CONDITIONS,
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
                gxe.ExpectColumnValuesToBeBetween(column="mean_rating_30d", min_value=RATING_MIN, max_value=RATING_MAX),
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
                gxe.ExpectColumnValuesToBeBetween(column="mean_rating_30d", min_value=RATING_MIN, max_value=RATING_MAX),
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
