"""Real-time feedback: store one event durably, update the user's session state, push it to the online store.

Order matters: the event and the state row commit together in Postgres first (the durable truth); the push to
Redis follows. Feast cannot push OFFLINE with the Postgres offline store (feast issue 3759), so the ``user_realtime``
table is written here and is also the push view's batch source: `recstack materialize` rebuilds Redis from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import psycopg

from recstack.stages.item_item import UserHistory

if TYPE_CHECKING:
    from feast import FeatureStore

RECENT_ITEMS = 20
SESSION_GAP_S = 30 * 60  # a pause longer than this starts a new session
PUSH_SOURCE = "user_realtime_push"
NEGATIVE_TYPES = ("dislike", "skip")  # not "recent interests": they do not enter recent_item_ids


class UnknownItem(LookupError):
    """The event names an item that is not in the catalog."""


class EventConflict(ValueError):
    """An event with this id exists with a different payload."""


@dataclass(frozen=True)
class Feedback:
    event_id: str
    user_id: str
    item_id: str
    event_type: str
    value: float | None = None
    occurred_at: datetime | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordResult:
    created: bool  # False: the same event was already stored (idempotent repeat)
    state: dict[str, Any] | None  # the user's real-time row after this event (None for a repeat)
    history: UserHistory | None = None  # the event as a one-item history (recstack.tables.history.merge)


def _same(row: tuple[Any, ...], event: Feedback, when: datetime) -> bool:
    user, item, event_type, value, occurred_at = row
    same_value = (value is None and event.value is None) or (
        value is not None and event.value is not None and math.isclose(value, event.value, rel_tol=1e-6)
    )
    return (
        (user, item, event_type) == (event.user_id, event.item_id, event.event_type)
        and same_value
        and (occurred_at == when if event.occurred_at is not None else True)
    )


def store_event(conn: psycopg.Connection, event: Feedback) -> RecordResult:
    """Insert the event and update ``user_realtime`` in one transaction; a repeat changes nothing."""
    when = event.occurred_at or datetime.now(UTC)
    with conn.transaction():
        item = conn.execute("SELECT item_id FROM items WHERE external_id = %s", (event.item_id,)).fetchone()
        if item is None:
            raise UnknownItem(f"item_id: unknown item {event.item_id!r}")
        conn.execute(
            "INSERT INTO users (external_id) VALUES (%s) ON CONFLICT (external_id) DO NOTHING", (event.user_id,)
        )
        inserted = conn.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, value, occurred_at, context) "
            "SELECT %s, u.user_id, %s, %s, %s, %s, %s FROM users u WHERE u.external_id = %s "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_pk",
            (event.event_id, item[0], event.event_type, event.value, when, json.dumps(event.context), event.user_id),
        ).fetchone()
        if inserted is None:
            existing = conn.execute(
                "SELECT u.external_id, i.external_id, e.event_type, e.value, e.occurred_at FROM events e "
                "JOIN users u ON u.user_id = e.user_id JOIN items i ON i.item_id = e.item_id WHERE e.event_id = %s",
                (event.event_id,),
            ).fetchone()
            if existing is not None and not _same(existing, event, when):
                raise EventConflict(f"event_id: {event.event_id!r} already exists with a different payload")
            return RecordResult(created=False, state=None)
        ts = int(when.timestamp())
        positive = event.event_type not in NEGATIVE_TYPES
        row = conn.execute(
            """
            INSERT INTO user_realtime AS r (user_id, event_timestamp, recent_item_ids, session_events, last_event_ts)
            VALUES (%(user)s, %(when)s, CASE WHEN %(positive)s THEN ARRAY[%(item)s] ELSE '{}'::text[] END, 1, %(ts)s)
            ON CONFLICT (user_id) DO UPDATE SET
                event_timestamp = greatest(r.event_timestamp, EXCLUDED.event_timestamp),
                recent_item_ids = CASE WHEN %(positive)s
                    THEN (ARRAY[%(item)s] || array_remove(r.recent_item_ids, %(item)s))[1:%(n)s]
                    ELSE r.recent_item_ids END,
                session_events = CASE WHEN %(ts)s - r.last_event_ts <= %(gap)s THEN r.session_events + 1 ELSE 1 END,
                last_event_ts = greatest(r.last_event_ts, %(ts)s)
            RETURNING user_id, event_timestamp, recent_item_ids, session_events, last_event_ts
            """,
            {
                "user": event.user_id,
                "when": when,
                "positive": positive,
                "item": event.item_id,
                "ts": ts,
                "n": RECENT_ITEMS,
                "gap": SESSION_GAP_S,
            },
        ).fetchone()
    assert row is not None
    keys = ["user_id", "event_timestamp", "recent_item_ids", "session_events", "last_event_ts"]
    value = np.nan if event.value is None else event.value
    one = UserHistory.of_events(
        np.array([item[0]]), np.array([event.event_type], object), np.array([value]), np.array([ts])
    )
    return RecordResult(created=True, state=dict(zip(keys, row, strict=True)), history=one)


def push_state(store: FeatureStore, state: dict[str, Any]) -> None:
    """Write one user's real-time row to the online store through Feast's push source."""
    from feast.data_source import PushMode

    frame = pd.DataFrame([state])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
