"""Imports against the real embedded Postgres: counts, idempotency, rejects by line, atomicity."""

from __future__ import annotations

import pandas as pd
import psycopg
import pytest

from recstack import stack
from recstack.ingest.loader import load_batch
from recstack.ingest.records import EVENT_COLUMNS, Batch
from recstack.ingest.synthetic import generate
from recstack.settings import Settings

pytestmark = pytest.mark.integration


def _counts(settings: Settings) -> tuple[int, int, int]:
    with psycopg.connect(stack.postgres_dsn(settings)) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM items), (SELECT count(*) FROM events)"
        ).fetchone()
    assert row is not None
    return row


def test_synthetic_import_loads_everything_once(clean_db: Settings) -> None:
    batch = generate(users=300, items=120, events=6000, seed=7)
    with psycopg.connect(stack.postgres_dsn(clean_db)) as conn:
        first = load_batch(conn, batch, "synthetic")
        second = load_batch(conn, batch, "synthetic")
    assert (first.users_loaded, first.items_loaded, first.events_loaded, first.rejected) == (300, 120, 6000, 0)
    assert (second.users_loaded, second.items_loaded, second.items_updated, second.events_loaded) == (0, 0, 0, 0)
    assert second.events_duplicate == 6000
    assert _counts(clean_db) == (300, 120, 6000)
    with psycopg.connect(stack.postgres_dsn(clean_db)) as conn:
        categories = conn.execute("SELECT categories FROM items WHERE external_id = 'i0000001'").fetchone()
        assert categories is not None and isinstance(categories[0], list) and categories[0]


def test_reimporting_a_changed_catalog_updates_the_items_it_changed(clean_db: Settings) -> None:
    batch = generate(users=20, items=40, events=200, seed=3)
    changed = batch.items.copy().set_index("external_id", drop=False)
    changed.at["i0000002", "title"] = "A new title"
    changed.at["i0000002", "categories"] = ["documentary"]
    changed.at["i0000005", "provider_id"] = "another-studio"
    changed = changed.reset_index(drop=True)
    with psycopg.connect(stack.postgres_dsn(clean_db)) as conn:
        load_batch(conn, batch, "synthetic")
        report = load_batch(conn, Batch(batch.users.iloc[:0], changed, batch.events.iloc[:0]), "catalog.csv")
        rows = dict(
            conn.execute(
                "SELECT external_id, (title, categories, provider_id)::text FROM items "
                "WHERE external_id IN ('i0000002', 'i0000005')"
            ).fetchall()
        )
    assert (report.items_loaded, report.items_updated) == (0, 2)
    assert rows["i0000002"].startswith('("A new title",{documentary},')
    assert rows["i0000005"].endswith(",another-studio)")
    assert _counts(clean_db) == (20, 40, 200)


def _events(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    frame["context"] = "{}"
    frame["source_file"] = "events.csv"
    frame["source_line"] = range(2, len(frame) + 2)
    return frame[EVENT_COLUMNS]


def test_events_naming_unknown_items_are_rejected_by_line_and_users_created(clean_db: Settings) -> None:
    catalog = generate(users=10, items=40, events=100, seed=1)
    with psycopg.connect(stack.postgres_dsn(clean_db)) as conn:
        load_batch(conn, Batch(catalog.users, catalog.items, catalog.events.iloc[:0]), "catalog")
        events = _events(
            [
                {
                    "event_id": "e1",
                    "user_external_id": "new-user",
                    "item_external_id": "i0000001",
                    "event_type": "like",
                    "value": None,
                    "occurred_at": "2026-03-01T10:00:00Z",
                },
                {
                    "event_id": "e2",
                    "user_external_id": "u0000001",
                    "item_external_id": "no-such-item",
                    "event_type": "view",
                    "value": None,
                    "occurred_at": "2026-03-01T10:00:00Z",
                },
                {
                    "event_id": "e3",
                    "user_external_id": "u0000001",
                    "item_external_id": "i0000002",
                    "event_type": "teleport",
                    "value": None,
                    "occurred_at": "2026-03-01T10:00:00Z",
                },
                {
                    "event_id": "e1",
                    "user_external_id": "new-user",
                    "item_external_id": "i0000001",
                    "event_type": "like",
                    "value": None,
                    "occurred_at": "2026-03-01T10:00:00Z",
                },
            ]
        )
        report = load_batch(conn, Batch(catalog.users.iloc[:0], catalog.items.iloc[:0], events), "events.csv")
    assert report.events_loaded == 1 and report.events_duplicate == 1
    assert report.users_loaded == 1  # "new-user" was created from its event
    assert report.rejected == 2
    assert [(r.file, r.line) for r in report.rejects] == [("events.csv", 3), ("events.csv", 4)]
    assert "unknown item 'no-such-item'" in report.rejects[0].reason
    assert "event_type" in report.rejects[1].reason


def test_a_failure_mid_import_leaves_the_database_unchanged(clean_db: Settings) -> None:
    batch = generate(users=50, items=40, events=500, seed=3)
    broken = batch.events.astype({"occurred_at": object})
    broken.loc[broken.index[-1], "occurred_at"] = "not a timestamp"  # COPY fails after users and items loaded
    before = _counts(clean_db)
    with psycopg.connect(stack.postgres_dsn(clean_db)) as conn, pytest.raises(psycopg.DataError):
        load_batch(conn, Batch(batch.users, batch.items, broken), "broken")
    assert _counts(clean_db) == before
