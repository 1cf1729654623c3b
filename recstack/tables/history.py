"""Each user's history as retrieval reads it (recstack.stages.item_item.UserHistory), kept in Redis so that no
request aggregates the ``events`` table: on ml-latest-small (users with 100+ ratings) that aggregation was the
retrieve stage's largest cost.

``events`` in Postgres stays the durable copy and the fallback:
  * ``recstack materialize`` rewrites the key of every user with events since its last run (all users the first
    time, or when Redis was flushed);
  * feedback merges each stored event into the user's key after its commit (a key that is not there stays absent);
  * a read that finds no key (or no Redis) aggregates the user's events from Postgres, and fills the key for
    ``FILL_TTL_S``: an event stored between that read and the fill is then missing from the key for at most that long.
Keys hold the ``HISTORY_ITEMS`` most recently touched items; older ones can be recommended again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import psycopg
import redis

from recstack.stages.item_item import UserHistory

HISTORY_ITEMS = 5000
FILL_TTL_S = 600
KEY_PREFIX = "recstack:history:"
WATERMARK_KEY = "recstack:history-watermark"  # the largest event_pk the last rebuild had seen
REBUILD_USERS = 20_000  # users per statement in a rebuild

_EVENTS = """
SELECT e.item_id, e.event_type, e.value, extract(epoch FROM e.occurred_at)::bigint
FROM events e JOIN users u ON u.user_id = e.user_id WHERE u.external_id = %s
"""
_EVENTS_OF_USERS = """
SELECT u.external_id, e.item_id, e.event_type, e.value, extract(epoch FROM e.occurred_at)::bigint
FROM events e JOIN users u ON u.user_id = e.user_id WHERE e.user_id = ANY(%s) ORDER BY e.user_id
"""


def key(user_id: str) -> str:
    return KEY_PREFIX + user_id


def read(client: redis.Redis, user_id: str) -> UserHistory | None:
    """The stored history, None when the key is absent (Redis errors propagate: the caller falls back)."""
    data = client.get(key(user_id))
    return UserHistory.unpack(data) if data is not None else None  # type: ignore[arg-type]


def from_postgres(conn: psycopg.Connection, user_id: str) -> UserHistory:
    rows = conn.execute(_EVENTS, (user_id,)).fetchall()
    return _of_rows(rows).latest(HISTORY_ITEMS)


def fill(client: redis.Redis, user_id: str, history: UserHistory) -> None:
    """Store what a read rebuilt from Postgres, unless a rebuild or another fill got there first."""
    client.set(key(user_id), history.latest(HISTORY_ITEMS).pack(), nx=True, ex=FILL_TTL_S)


def merge(client: redis.Redis, user_id: str, event: UserHistory, attempts: int = 5) -> bool:
    """Merge a stored event into the user's key (optimistic: WATCH / MULTI); False when there is no key. A key that
    keeps changing under us is dropped, so the next read rebuilds it from Postgres."""
    name = key(user_id)
    with client.pipeline() as pipe:
        for _ in range(attempts):
            try:
                pipe.watch(name)
                data = pipe.get(name)
                if data is None:
                    pipe.reset()
                    return False
                merged = UserHistory.unpack(data).merged(event).latest(HISTORY_ITEMS)  # type: ignore[arg-type]
                pipe.multi()
                pipe.set(name, merged.pack(), keepttl=True)
                pipe.execute()
                return True
            except redis.WatchError:
                continue
    client.delete(name)
    return False


def rebuild(
    conn: psycopg.Connection,
    client: redis.Redis,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Rewrite the key of every user with events after the last rebuild's watermark (every user when ``full``, on
    the first run, or when the watermark is gone); the number of users written."""
    mark_row = conn.execute("SELECT coalesce(max(event_pk), 0) FROM events").fetchone()
    mark = int(mark_row[0]) if mark_row else 0
    stored = client.get(WATERMARK_KEY)
    since = 0 if full or stored is None else int(stored)  # type: ignore[arg-type]
    users = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT user_id FROM events WHERE event_pk > %s AND event_pk <= %s ORDER BY 1", (since, mark)
        ).fetchall()
    ]
    for start in range(0, len(users), REBUILD_USERS):
        rows = conn.execute(_EVENTS_OF_USERS, (users[start : start + REBUILD_USERS],)).fetchall()
        with client.pipeline(transaction=False) as pipe:
            for user_id, history in _by_user(rows):
                pipe.set(key(user_id), history.latest(HISTORY_ITEMS).pack())  # no expiry: rebuilt copies stay
            pipe.execute()
        if progress:
            progress(min(start + REBUILD_USERS, len(users)), len(users))
    client.set(WATERMARK_KEY, mark)
    return len(users)


def _of_rows(rows: list[tuple[object, ...]]) -> UserHistory:
    if not rows:
        return UserHistory.empty()
    items, types, values, ts = zip(*rows, strict=True)
    return UserHistory.of_events(
        np.asarray(items, np.int64),
        np.asarray(types, object),
        np.asarray([np.nan if v is None else v for v in values], np.float64),
        np.asarray(ts, np.int64),
    )


def _by_user(rows: list[tuple[object, ...]]) -> list[tuple[str, UserHistory]]:
    """Rows ordered by user -> each user's history."""
    out: list[tuple[str, UserHistory]] = []
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][0] != rows[start][0]:
            out.append((str(rows[start][0]), _of_rows([r[1:] for r in rows[start:end]])))
            start = end
    return out
