"""`recstack features build`: daily feature snapshots computed in Postgres, incrementally.

Incremental by ingestion time: only days touched by events ingested since the last build are recomputed (from the
earliest such event's day onward, because later snapshots' 30-day windows include it). Rows are upserted, so a
rebuild of a day replaces its snapshot; each build is one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING

import psycopg

from recstack.features.realtime import RECENT_ITEMS, SESSION_GAP_S

if TYPE_CHECKING:  # a type only: the loader imports pandas, which `recstack --help` need not pay for
    from recstack.ingest.loader import ProgressFn

TABLES = ("user_features", "item_features")
CHUNK_DAYS = 14  # days per statement: bounds memory of the window sorts and drives the progress bar


@dataclass
class BuildResult:
    table: str
    rows_before: int
    rows_after: int
    days: int
    seconds: float

    @property
    def rows_added(self) -> int:
        return self.rows_after - self.rows_before


def _sql(table: str) -> str:
    return (resources.files("recstack.features") / "sql" / f"{table}.sql").read_text()


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 (table from TABLES)
    return int(row[0]) if row else 0


def pending_window(conn: psycopg.Connection, table: str) -> tuple[datetime, datetime, datetime] | None:
    """(first day to rebuild, end of the last event day, newest ingestion time), or None when up to date."""
    row = conn.execute(
        "SELECT date_trunc('day', min(e.occurred_at)), max(e.ingested_at) FROM events e "
        "WHERE e.ingested_at > coalesce((SELECT ingested_through FROM feature_watermarks WHERE table_name = %s), "
        "'-infinity')",
        (table,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    last = conn.execute("SELECT date_trunc('day', max(occurred_at)) + interval '1 day' FROM events").fetchone()
    assert last is not None
    return row[0], last[0], row[1]


def build_table(conn: psycopg.Connection, table: str, progress: ProgressFn | None = None) -> BuildResult:
    """Recompute the pending days of one feature table in one transaction."""
    started = time.perf_counter()
    with conn.transaction():
        before = _count(conn, table)
        window = pending_window(conn, table)
        days = 0
        if window is not None:
            since, until, ingested_through = window
            days = max(1, (until - since).days)
            sql = _sql(table)
            chunk = since
            while chunk < until:
                chunk_end = min(chunk + timedelta(days=CHUNK_DAYS), until)
                conn.execute(sql, {"since": chunk, "until": chunk_end})  # type: ignore[arg-type]
                chunk = chunk_end
                if progress:
                    progress(table, (chunk - since).days, days)
            conn.execute(
                "INSERT INTO feature_watermarks (table_name, ingested_through) VALUES (%s, %s) "
                "ON CONFLICT (table_name) DO UPDATE SET ingested_through = EXCLUDED.ingested_through, "
                "updated_at = now()",
                (table, ingested_through),
            )
        after = _count(conn, table)
    if window is not None:
        conn.execute(f"ANALYZE {table}")
    return BuildResult(table, before, after, days, time.perf_counter() - started)


# The real-time state of users as the events say it (the last RECENT_ITEMS distinct non-negative items, newest first;
# events in the last SESSION_GAP_S of their activity: recstack.features.realtime's rules), for users whose events are
# newer than their row. Live feedback keeps it current
# afterwards (recstack.features.realtime).
_REALTIME_SQL = """
WITH last AS (
    SELECT user_id, max(occurred_at) AS last_at FROM events GROUP BY user_id
), latest_per_item AS (
    SELECT DISTINCT ON (e.user_id, e.item_id) e.user_id, e.item_id, e.occurred_at
    FROM events e WHERE e.event_type NOT IN ('dislike', 'skip')
    ORDER BY e.user_id, e.item_id, e.occurred_at DESC
), ranked AS (
    SELECT user_id, item_id, row_number() OVER (PARTITION BY user_id ORDER BY occurred_at DESC, item_id) AS n
    FROM latest_per_item
), recent AS (
    SELECT r.user_id, array_agg(i.external_id ORDER BY r.n) AS items
    FROM ranked r JOIN items i ON i.item_id = r.item_id WHERE r.n <= %(n)s GROUP BY r.user_id
), session AS (
    SELECT e.user_id, count(*) AS events FROM events e JOIN last l USING (user_id)
    WHERE e.occurred_at > l.last_at - make_interval(secs => %(gap)s::float8) GROUP BY e.user_id
)
INSERT INTO user_realtime AS r (user_id, event_timestamp, recent_item_ids, session_events, last_event_ts)
SELECT u.external_id, l.last_at, coalesce(rc.items, '{}'), coalesce(s.events, 0), extract(epoch FROM l.last_at)::bigint
FROM last l JOIN users u ON u.user_id = l.user_id
LEFT JOIN recent rc ON rc.user_id = l.user_id LEFT JOIN session s ON s.user_id = l.user_id
ON CONFLICT (user_id) DO UPDATE SET
    event_timestamp = EXCLUDED.event_timestamp, recent_item_ids = EXCLUDED.recent_item_ids,
    session_events = EXCLUDED.session_events, last_event_ts = EXCLUDED.last_event_ts
WHERE r.last_event_ts < EXCLUDED.last_event_ts
"""


def build_realtime(conn: psycopg.Connection) -> BuildResult:
    """Refresh user_realtime from the events (only users whose events are newer than their row)."""
    started = time.perf_counter()
    before = _count(conn, "user_realtime")
    with conn.transaction():
        conn.execute(_REALTIME_SQL, {"n": RECENT_ITEMS, "gap": SESSION_GAP_S})
    return BuildResult("user_realtime", before, _count(conn, "user_realtime"), 0, time.perf_counter() - started)


def build_features(conn: psycopg.Connection, progress: ProgressFn | None = None) -> list[BuildResult]:
    """Bring every feature table up to date with the events."""
    results = [build_table(conn, table, progress) for table in TABLES]
    if any(r.days for r in results):
        results.append(build_realtime(conn))
    return results
