"""`recstack materialize`: validated feature tables -> Redis, with Feast's own materialization (local engine).

The first run of a view covers all its history (Feast's incremental start would otherwise be now - ttl, which
skips data sets recorded long ago, such as MovieLens); later runs are incremental from the last end time, unless
``full`` is asked for or the online store is empty (a new or flushed Redis): then every view starts over.
The validation gate runs first: nothing from a failing batch reaches Redis unless forced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from recstack import db, stack
from recstack.features.store import open_store
from recstack.settings import Settings
from recstack.tables import history

# Feature view -> (table, entity column) whose rows it materializes.
VIEW_TABLES = {
    "user_features": ("user_features", "user_id"),
    "item_features": ("item_features", "item_id"),
    "user_realtime": ("user_realtime", "user_id"),
}
HISTORY_VIEW = "retrieval history"  # recstack.tables.history, rewritten with the views (not a Feast view)
GATE_SUITES = ["users", "items", "events", "user_features", "item_features"]


@dataclass
class MaterializeResult:
    view: str
    start: datetime
    end: datetime
    entities: int
    seconds: float

    @property
    def entities_per_s(self) -> float:
        return self.entities / self.seconds if self.seconds > 0 else 0.0


def _window_entities(conn: psycopg.Connection, view: str, start: datetime, end: datetime) -> int:
    table, key = VIEW_TABLES[view]
    row = conn.execute(
        f"SELECT count(DISTINCT {key}) FROM {table} WHERE event_timestamp > %s AND event_timestamp <= %s",  # noqa: S608
        (start, end),
    ).fetchone()
    return int(row[0]) if row else 0


def _earliest(conn: psycopg.Connection, view: str) -> datetime | None:
    table, _ = VIEW_TABLES[view]
    row = conn.execute(f"SELECT min(event_timestamp) FROM {table}").fetchone()  # noqa: S608 (constant table)
    return row[0] if row else None


def online_store_empty(settings: Settings) -> bool:
    """No key at all in the online store's Redis database: whatever Feast's registry says was materialized is gone."""
    with stack.redis_client(settings) as client:
        return int(client.dbsize()) == 0


def materialize(settings: Settings, full: bool = False) -> list[MaterializeResult]:
    """Write the latest feature values per entity into Redis for every batch view. The validation gate
    (``GATE_SUITES``) is the caller's: ``recstack materialize`` runs it first."""
    store = open_store(settings)
    full = full or online_store_empty(settings)
    end = datetime.now(UTC)
    start_all = end
    results = []
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s, autocommit=True) as conn:
        for view_name in VIEW_TABLES:
            view = store.get_feature_view(view_name)
            intervals = view.materialization_intervals
            if intervals and not full:
                start = max(i[1] for i in intervals)
            else:
                earliest = _earliest(conn, view_name)
                if earliest is None:
                    continue
                start = earliest - timedelta(seconds=1)
            start_all = min(start_all, start)
            started = time.perf_counter()
            store.materialize(start_date=start, end_date=end, feature_views=[view_name])
            results.append(
                MaterializeResult(
                    view_name, start, end, _window_entities(conn, view_name, start, end), time.perf_counter() - started
                )
            )
        # Retrieval's per-user histories (recstack.tables.history): the users with events since the last run.
        started = time.perf_counter()
        with stack.redis_client(settings) as client:
            users = history.rebuild(conn, client, full=full)
        results.append(MaterializeResult(HISTORY_VIEW, start_all, end, users, time.perf_counter() - started))
    if results:  # serving replicas keep item features in memory per version: tell them to reload
        from recstack.features.online import bump_materialized_version

        bump_materialized_version(stack.redis_client(settings))
    return results
