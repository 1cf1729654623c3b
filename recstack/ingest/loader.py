"""Write a ``Batch`` into Postgres atomically: COPY into temp staging tables, then merge.

Everything happens in one transaction, so a fatal error leaves the database unchanged. Re-imports add nothing:
users merge on their external id and events on ``event_id`` (``ON CONFLICT DO NOTHING``); an item whose external id
exists takes the new domain, title, categories, description, provider and attributes (a changed catalog row is
counted as updated, and ``recstack train`` re-encodes its content vector because its text hash changed). Rows the
database would refuse (unknown item, bad type, over-long id) are filtered in SQL and reported by source file and line.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import psycopg

from recstack.ingest.records import EVENT_COLUMNS, EVENT_TYPES, ITEM_COLUMNS, MAX_ID_LEN, USER_COLUMNS, Batch, Reject

CHUNK_ROWS = 250_000
REJECT_SAMPLE = 10

# (stage, done, total) -> None; the CLI draws progress bars from it.
ProgressFn = Callable[[str, int, int], None]


@dataclass
class LoadReport:
    """What an import did; ``rejects`` keeps the first few rejected rows, ``rejected`` counts all of them."""

    source: str
    rows_read: int = 0
    users_loaded: int = 0
    items_loaded: int = 0
    items_updated: int = 0
    events_loaded: int = 0
    events_duplicate: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def loaded(self) -> int:
        return self.users_loaded + self.items_loaded + self.items_updated + self.events_loaded


def _pg_array(values: object) -> str:
    """A Postgres text[] literal for CSV COPY: {"a","b \\"c\\""}."""
    if not isinstance(values, list | tuple):
        return "{}"
    quoted = ('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def _copy_frame(
    cur: psycopg.Cursor, table: str, frame: pd.DataFrame, columns: list[str], stage: str, progress: ProgressFn | None
) -> None:
    total = len(frame)
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)") as copy:
        for start in range(0, max(total, 1), CHUNK_ROWS):
            chunk = frame.iloc[start : start + CHUNK_ROWS][columns]
            buf = io.StringIO()
            chunk.to_csv(buf, header=False, index=False, date_format="%Y-%m-%d %H:%M:%S.%f%z")
            copy.write(buf.getvalue())
            if progress:
                progress(stage, min(start + CHUNK_ROWS, total), total)


def _load_users(cur: psycopg.Cursor, users: pd.DataFrame, progress: ProgressFn | None) -> int:
    cur.execute(
        "CREATE TEMP TABLE stage_users (external_id text, attributes jsonb, created_at timestamptz) ON COMMIT DROP"
    )
    _copy_frame(cur, "stage_users", users, USER_COLUMNS, "users", progress)
    cur.execute(
        "INSERT INTO users (external_id, attributes, created_at) "
        "SELECT external_id, coalesce(attributes, '{}'), coalesce(created_at, now()) FROM stage_users "
        "WHERE length(external_id) BETWEEN 1 AND %s ON CONFLICT (external_id) DO NOTHING",
        (MAX_ID_LEN,),
    )
    return cur.rowcount


def _load_items(cur: psycopg.Cursor, items: pd.DataFrame, progress: ProgressFn | None) -> tuple[int, int]:
    """Returns (added, updated); rows equal to the stored ones count as neither."""
    cur.execute(
        "CREATE TEMP TABLE stage_items (external_id text, domain text, title text, categories text[], "
        "description text, provider_id text, attributes jsonb, created_at timestamptz) ON COMMIT DROP"
    )
    frame = items.assign(categories=items["categories"].map(_pg_array))
    _copy_frame(cur, "stage_items", frame, ITEM_COLUMNS, "items", progress)
    cur.execute(
        "INSERT INTO items (external_id, domain, title, categories, description, provider_id, attributes, created_at) "
        "SELECT external_id, domain, title, coalesce(categories, '{}'), coalesce(description, ''), provider_id, "
        "coalesce(attributes, '{}'), coalesce(created_at, now()) FROM stage_items "
        "WHERE length(external_id) BETWEEN 1 AND %s ON CONFLICT (external_id) DO UPDATE SET "
        "domain = EXCLUDED.domain, title = EXCLUDED.title, categories = EXCLUDED.categories, "
        "description = EXCLUDED.description, provider_id = EXCLUDED.provider_id, attributes = EXCLUDED.attributes "
        "WHERE (items.domain, items.title, items.categories, items.description, items.provider_id, items.attributes) "
        "IS DISTINCT FROM (EXCLUDED.domain, EXCLUDED.title, EXCLUDED.categories, EXCLUDED.description, "
        "EXCLUDED.provider_id, EXCLUDED.attributes) "
        "RETURNING (xmax = 0) AS added",
        (MAX_ID_LEN,),
    )
    added = [row[0] for row in cur.fetchall()]
    return sum(added), len(added) - sum(added)


# Why a staged event is refused; NULL means it is loadable. Checked in SQL so nothing aborts the transaction.
_EVENT_REJECT_REASON = """
    CASE
      WHEN s.event_id IS NULL OR length(s.event_id) NOT BETWEEN 1 AND %(max_len)s
        THEN 'event_id: empty or longer than ' || %(max_len)s || ' characters'
      WHEN s.user_external_id IS NULL OR length(s.user_external_id) NOT BETWEEN 1 AND %(max_len)s
        THEN 'user_id: empty or longer than ' || %(max_len)s || ' characters'
      WHEN s.event_type IS NULL OR s.event_type <> ALL (%(types)s)
        THEN 'event_type: ' || coalesce(quote_literal(s.event_type), 'missing') || ' is not one of ' || %(types_text)s
      WHEN s.occurred_at IS NULL THEN 'occurred_at: missing'
      WHEN i.item_id IS NULL THEN 'item_id: unknown item ' || coalesce(quote_literal(s.item_external_id), 'NULL')
          || ' (import the catalog first)'
    END"""


_STAGE_CHECKED = (
    "CREATE TEMP TABLE stage_checked ON COMMIT DROP AS SELECT s.*, i.item_id, "  # noqa: S608 (constant SQL fragments only)
    + _EVENT_REJECT_REASON
    + " AS reason FROM stage_events s LEFT JOIN items i ON i.external_id = s.item_external_id"
)


def _load_events(cur: psycopg.Cursor, events: pd.DataFrame, progress: ProgressFn | None) -> tuple[int, int, int]:
    """Returns (inserted, duplicates, rejected) and leaves rejected rows in ``stage_rejects``."""
    cur.execute(
        "CREATE TEMP TABLE stage_events (event_id text, user_external_id text, item_external_id text, "
        "event_type text, value real, occurred_at timestamptz, context jsonb, source_file text, source_line bigint) "
        "ON COMMIT DROP"
    )
    _copy_frame(cur, "stage_events", events, EVENT_COLUMNS, "events", progress)
    params = {"types": list(EVENT_TYPES), "types_text": ", ".join(EVENT_TYPES), "max_len": MAX_ID_LEN}
    cur.execute(_STAGE_CHECKED, params)
    # Users named only by events are created; their first event time is their creation time.
    cur.execute(
        "INSERT INTO users (external_id, created_at) SELECT user_external_id, min(occurred_at) FROM stage_checked "
        "WHERE reason IS NULL GROUP BY user_external_id ON CONFLICT (external_id) DO NOTHING"
    )
    cur.execute(
        "INSERT INTO events (event_id, user_id, item_id, event_type, value, occurred_at, context) "
        "SELECT s.event_id, u.user_id, s.item_id, s.event_type, s.value, s.occurred_at, coalesce(s.context, '{}') "
        "FROM stage_checked s JOIN users u ON u.external_id = s.user_external_id WHERE s.reason IS NULL "
        "ON CONFLICT (event_id) DO NOTHING"
    )
    inserted = cur.rowcount
    row = cur.execute(
        "SELECT count(*) FILTER (WHERE reason IS NULL), count(*) FILTER (WHERE reason IS NOT NULL) FROM stage_checked"
    ).fetchone()
    assert row is not None
    valid, rejected = row
    return inserted, valid - inserted, rejected


def load_batch(conn: psycopg.Connection, batch: Batch, source: str, progress: ProgressFn | None = None) -> LoadReport:
    """Load users, then items, then events of ``batch`` in one transaction on ``conn``."""
    started = time.perf_counter()
    report = LoadReport(source=source, rows_read=batch.rows_read)
    rejects = list(batch.rejects)
    with conn.transaction(), conn.cursor() as cur:
        if len(batch.users):
            report.users_loaded = _load_users(cur, batch.users, progress)
        if len(batch.items):
            report.items_loaded, report.items_updated = _load_items(cur, batch.items, progress)
        if len(batch.events):
            users_before = cur.execute("SELECT count(*) FROM users").fetchone()[0]  # type: ignore[index]
            report.events_loaded, report.events_duplicate, db_rejected = _load_events(cur, batch.events, progress)
            report.users_loaded += cur.execute("SELECT count(*) FROM users").fetchone()[0] - users_before  # type: ignore[index]
            report.rejected += db_rejected
            sample = cur.execute(
                "SELECT source_file, source_line, reason FROM stage_checked WHERE reason IS NOT NULL "
                "ORDER BY source_file, source_line LIMIT %s",
                (REJECT_SAMPLE,),
            ).fetchall()
            rejects += [Reject(f or source, int(line or 0), reason) for f, line, reason in sample]
    report.rejected += len(batch.rejects)
    report.rejects = sorted(rejects, key=lambda r: (r.file, r.line))[:REJECT_SAMPLE]
    # Fresh planner statistics after a bulk load keep the feature SQL and joins on good plans.
    if report.loaded > 10_000:
        conn.execute("ANALYZE users, items, events")
        conn.commit()
    report.seconds = time.perf_counter() - started
    return report
