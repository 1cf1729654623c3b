"""Read-only summaries of what the stores hold (used by `demo` and the benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


@dataclass
class CatalogSummary:
    users: int
    items: int
    events: int
    providers: int
    items_by_domain: dict[str, int]
    events_by_type: dict[str, int]
    first_event: str | None
    last_event: str | None


def summarize(conn: psycopg.Connection) -> CatalogSummary:
    """Row counts and distributions of users, items and events."""
    one = conn.execute(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM items), (SELECT count(*) FROM events), "
        "(SELECT count(DISTINCT provider_id) FROM items), "
        "(SELECT min(occurred_at)::text FROM events), (SELECT max(occurred_at)::text FROM events)"
    ).fetchone()
    assert one is not None
    domains: dict[str, int] = dict(
        conn.execute("SELECT domain, count(*) FROM items GROUP BY domain ORDER BY 2 DESC").fetchall()
    )
    types: dict[str, int] = dict(
        conn.execute("SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC").fetchall()
    )
    return CatalogSummary(one[0], one[1], one[2], one[3], domains, types, one[4], one[5])
