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

import psycopg

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


def build_features(conn: psycopg.Connection, progress: ProgressFn | None = None) -> list[BuildResult]:
    """Bring every feature table up to date with the events."""
    return [build_table(conn, table, progress) for table in TABLES]
