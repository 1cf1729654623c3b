"""The feature store end to end on the real embedded Postgres + Redis: build, apply, materialize, push, PIT joins,
validation gate, and registering a new feature the way the README tells ML engineers to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from recstack import stack
from recstack.features import store as feast_store
from recstack.features.build import build_features, build_realtime
from recstack.features.materialize import materialize
from recstack.features.realtime import Feedback, push_state, store_event
from recstack.features.training_frames import ranker_frame
from recstack.ingest.synthetic import generate
from recstack.settings import Settings
from tests.conftest import load_featured

pytestmark = pytest.mark.integration

USER_COLUMNS = ["likes_30d", "views_7d", "like_ratio_30d", "mean_rating_30d", "affinity_categories"]
ITEM_COLUMNS = ["popularity_30d", "like_ratio_30d", "domain", "categories", "provider_id"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recstack.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


@pytest.fixture(scope="module")
def featured(stack_settings: Settings) -> Settings:
    """Fresh small synthetic data with features built, the repo applied and materialized."""
    load_featured(stack_settings, generate(users=300, items=150, events=15_000, seed=5))
    return stack_settings


def latest_offline(dsn: str, table: str, key: str, ids: list[str], columns: list[str]) -> pd.DataFrame:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT DISTINCT ON ({key}) {key}, {', '.join(columns)} FROM {table} "  # noqa: S608 (test constants)
            f"WHERE {key} = ANY(%s) ORDER BY {key}, event_timestamp DESC",
            (ids,),
        ).fetchall()
    return pd.DataFrame(rows, columns=[key, *columns]).set_index(key)


def test_build_is_incremental(featured: Settings) -> None:
    dsn = stack.postgres_dsn(featured)
    with psycopg.connect(dsn, autocommit=True) as conn:
        again = build_features(conn)
        assert [(r.days, r.rows_added) for r in again] == [(0, 0), (0, 0)]
        last = conn.execute("SELECT max(occurred_at) FROM events").fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, occurred_at) "
            "SELECT 'late-1', user_id, 1, 'like', %s FROM users WHERE external_id = 'u0000001'",
            (last + timedelta(days=1),),
        )
        after = build_features(conn)
        daily = [r for r in after if r.table in ("user_features", "item_features")]
        assert len(daily) == 2 and all(1 <= r.days <= 2 for r in daily)  # only the new day (and the one before)
        assert daily[0].rows_added == 1  # u0000001's snapshot for the new day
        realtime = [r for r in after if r.table == "user_realtime"]
        assert len(realtime) == 1  # the session table follows the events too
        row = conn.execute("SELECT recent_item_ids[1] FROM user_realtime WHERE user_id = 'u0000001'").fetchone()
        assert row == ("i0000001",)
        # Leave the data as materialized for the other tests.
        conn.execute("DELETE FROM events WHERE event_id = 'late-1'")
        conn.execute("DELETE FROM user_realtime WHERE user_id = 'u0000001'")
        build_realtime(conn)
        for table in ("user_features", "item_features"):
            conn.execute(f"DELETE FROM {table} WHERE event_timestamp > %s", (last + timedelta(days=1),))  # noqa: S608


def test_online_values_equal_the_latest_offline_values(featured: Settings) -> None:
    store = feast_store.open_store(featured)
    dsn = stack.postgres_dsn(featured)
    users = [f"u{n:07d}" for n in range(1, 301, 13)]
    items = [f"i{n:07d}" for n in range(1, 151, 7)]
    online_users = (
        store.get_online_features(
            features=[f"user_features:{c}" for c in USER_COLUMNS], entity_rows=[{"user_id": u} for u in users]
        )
        .to_df()
        .set_index("user_id")
    )
    offline_users = latest_offline(dsn, "user_features", "user_id", users, USER_COLUMNS)
    assert len(offline_users) == len(users)
    for user in users:
        for column in USER_COLUMNS:
            online, offline = online_users.at[user, column], offline_users.at[user, column]
            if column == "affinity_categories":
                assert list(online) == list(offline)
            elif pd.isna(offline):
                assert pd.isna(online)
            else:
                assert online == pytest.approx(offline, rel=1e-6)
    online_items = (
        store.get_online_features(
            features=[f"item_features:{c}" for c in ITEM_COLUMNS], entity_rows=[{"item_id": i} for i in items]
        )
        .to_df()
        .set_index("item_id")
    )
    offline_items = latest_offline(dsn, "item_features", "item_id", items, ITEM_COLUMNS)
    for item in offline_items.index:
        assert online_items.at[item, "popularity_30d"] == offline_items.at[item, "popularity_30d"]
        assert list(online_items.at[item, "categories"]) == list(offline_items.at[item, "categories"])
        assert online_items.at[item, "provider_id"] == offline_items.at[item, "provider_id"]


def test_an_emptied_online_store_is_filled_again_by_the_next_materialize(featured: Settings) -> None:
    """A flushed or replaced Redis: Feast's registry still says everything was materialized, so an incremental run
    alone would leave serving without features; materialize notices the empty store and copies everything again."""
    from recstack.features.materialize import HISTORY_VIEW, VIEW_TABLES

    with stack.redis_client(featured) as client:
        client.flushdb()
    results = materialize(featured)  # retrieval's per-user histories are rewritten too
    assert {r.view for r in results} == {*VIEW_TABLES, HISTORY_VIEW} and all(r.entities > 0 for r in results)
    store = feast_store.open_store(featured)
    online = store.get_online_features(
        features=["user_features:likes_30d", "user_realtime:recent_item_ids"], entity_rows=[{"user_id": "u0000001"}]
    ).to_dict()
    assert online["likes_30d"][0] is not None and online["recent_item_ids"][0]
    again = materialize(featured)  # the store is full: back to incremental (nothing new)
    assert all(r.entities == 0 for r in again)


def test_fast_lookup_equals_feast_on_random_entities(featured: Settings) -> None:
    """Same values as FeatureStore.get_online_features, including unknown users/items (all None), and a
    materialization version bump makes a replica's cached item columns reload."""
    import random

    from recstack.features.online import OnlineLookup, bump_materialized_version

    store = feast_store.open_store(featured)
    client = stack.redis_client(featured)
    lookup = OnlineLookup.from_store(
        store, client, user_views={"user_features": None, "user_realtime": None}, item_views={"item_features": None}
    )
    lookup.load_items([f"i{n:07d}" for n in range(1, 151)])
    rng = random.Random(11)
    features = [
        *(f"user_features:{f.name}" for f in store.get_feature_view("user_features").features),
        *(f"user_realtime:{f.name}" for f in store.get_feature_view("user_realtime").features),
        *(f"item_features:{f.name}" for f in store.get_feature_view("item_features").features),
    ]
    for user_id in [*(f"u{rng.randint(1, 300):07d}" for _ in range(5)), "nobody"]:
        items = [f"i{rng.randint(1, 150):07d}" for _ in range(40)] + ["i-not-there", "i0000007"]
        expected = store.get_online_features(
            features=features,
            entity_rows=[{"user_id": user_id, "item_id": i} for i in items],
            full_feature_names=True,
        ).to_dict()
        got = lookup.lookup(user_id, items).to_feast_dict(user_id)
        assert set(got) == set(expected)
        for name in expected:
            assert got[name] == expected[name], name
    assert got["user_features__likes_30d"] == [None] * len(items)  # unknown user: every value None, like Feast

    version = lookup.version
    with psycopg.connect(stack.postgres_dsn(featured), autocommit=True) as conn:
        before = conn.execute("SELECT max(popularity_30d) FROM item_features WHERE item_id = 'i0000001'").fetchone()
    store.write_to_online_store(
        "item_features",
        pd.DataFrame(
            {
                "item_id": ["i0000001"],
                "popularity_1d": [1],
                "popularity_7d": [2],
                "popularity_30d": [123456],
                "like_ratio_30d": [0.5],
                "mean_rating_30d": [4.0],
                "age_days": [3.0],
                "domain": ["movies"],
                "categories": [["drama"]],
                "provider_id": ["p1"],
                "event_timestamp": [datetime.now(UTC)],
                "created": [datetime.now(UTC)],
            }
        ),
    )
    try:
        assert lookup.lookup("nobody", ["i0000001"]).items["item_features__popularity_30d"][0] != 123456
        bump_materialized_version(client)
        deadline = time.monotonic() + 30  # the reload runs in the background; lookups answer meanwhile
        while (refreshed := lookup.lookup("nobody", ["i0000001"])).version != version + 1:
            assert time.monotonic() < deadline, "the item columns were not reloaded after a version bump"
            time.sleep(0.05)
        assert refreshed.items["item_features__popularity_30d"][0] == 123456
    finally:
        materialize(featured)  # restores the materialized values (and bumps the version)
        assert before is not None


def test_feedback_is_durable_and_pushed_online(featured: Settings) -> None:
    store = feast_store.open_store(featured)
    with psycopg.connect(stack.postgres_dsn(featured)) as conn:
        # what serving's feedback sink does (serving/feedback.py): store durably, then push the new state online
        result = store_event(conn, Feedback("rt-1", "u0000002", "i0000009", "like"))
        assert result.state is not None
        push_state(store, result.state)
        repeat = store_event(conn, Feedback("rt-1", "u0000002", "i0000009", "like"))
        stored = conn.execute("SELECT count(*) FROM events WHERE event_id = 'rt-1'").fetchone()
    assert result.created and not repeat.created
    assert stored == (1,)
    online = store.get_online_features(
        features=["user_realtime:recent_item_ids", "user_realtime:session_events"],
        entity_rows=[{"user_id": "u0000002"}],
    ).to_dict()
    assert online["recent_item_ids"][0][0] == "i0000009"
    assert online["session_events"][0] == 1


def test_point_in_time_join_never_uses_a_later_snapshot(featured: Settings) -> None:
    """Plant a snapshot dated after the label with an impossible value: it must not be joined."""
    dsn = stack.postgres_dsn(featured)
    with psycopg.connect(dsn, autocommit=True) as conn:
        label_time, likes_before = conn.execute(
            "SELECT event_timestamp + interval '1 hour', likes_30d FROM user_features WHERE user_id = 'u0000003' "
            "ORDER BY event_timestamp DESC OFFSET 1 LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        future = conn.execute(
            "SELECT min(event_timestamp) FROM user_features WHERE user_id = 'u0000003' AND event_timestamp > %s",
            (label_time,),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "UPDATE user_features SET likes_30d = 999999 WHERE user_id = 'u0000003' AND event_timestamp = %s", (future,)
        )
    try:
        store = feast_store.open_store(featured)
        labels = pd.DataFrame(
            {
                "user_id": ["u0000003", "u0000003"],
                "item_id": ["i0000001", "i0000001"],
                "event_timestamp": [label_time, future + timedelta(minutes=1)],
                "label": [1, 0],
            }
        )
        frame = ranker_frame(store, labels, service="ranking_v1")
        # The planted value is joined only to the label after its time.
        assert list(frame["user_features__likes_30d"]) == [likes_before, 999999]
        assert {
            "user_item_features__category_affinity",
            "context_features__hour_sin",
            "item_features__popularity_30d",
        } <= set(frame.columns)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE user_features SET likes_30d = 0 WHERE likes_30d = 999999")


def test_corrupt_events_fail_validation_and_block_materialize(featured: Settings) -> None:
    dsn = stack.postgres_dsn(featured)
    future = datetime.now(UTC) + timedelta(days=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, value, occurred_at) VALUES "
            "('bad-rating', 1, 1, 'rating', 99, now() - interval '1 day'), "
            "('bad-user', 987654, 1, 'view', NULL, now() - interval '1 day'), "
            "('bad-time', 1, 1, 'view', NULL, %s)",
            (future,),
        )
    try:
        keys_before = stack.redis_client(featured).dbsize()
        result = cli("validate", "--no-docs")
        assert result.returncode == 1
        assert "events: ratings_out_of_range = 1, expected 0..0" in result.stdout
        assert "events_with_unknown_user = 1, expected 0..0" in result.stdout
        assert "events_in_future = 1, expected 0..0" in result.stdout
        refused = cli("materialize")
        assert refused.returncode == 1
        assert "events_in_future" in refused.stderr and "--force" in refused.stderr
        assert stack.redis_client(featured).dbsize() == keys_before  # nothing reached Redis
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM events WHERE event_id IN ('bad-rating', 'bad-user', 'bad-time')")


NEW_VIEW = """
from datetime import timedelta

from feast import FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Int64

from entities import item

# How long an item's title is (a new feature registered by the walkthrough test).
item_title_source = PostgreSQLSource(
    name="item_title_source", table="item_title_stats", timestamp_field="event_timestamp"
)

item_title_stats = FeatureView(
    name="item_title_stats",
    entities=[item],
    ttl=timedelta(days=3650),
    schema=[Field(name="title_length", dtype=Int64)],
    source=item_title_source,
)
"""


def test_registering_a_new_feature_end_to_end(featured: Settings, tmp_path: Path) -> None:
    """The README walkthrough: define a view, feast apply, build its table, materialize, read online."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(featured.feature_repo, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "item_title.py").write_text(NEW_VIEW)
    with psycopg.connect(stack.postgres_dsn(featured), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS item_title_stats AS SELECT external_id AS item_id, "
            "length(title)::bigint AS title_length, created_at AS event_timestamp FROM items"
        )
        expected = conn.execute("SELECT length(title) FROM items WHERE external_id = 'i0000004'").fetchone()
    env = {**os.environ, **stack.client_env(featured)}
    applied = subprocess.run(
        [str(Path(sys.executable).parent / "feast"), "apply"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert applied.returncode == 0, applied.stderr
    from feast import FeatureStore

    os.environ.update(stack.client_env(featured))
    store = FeatureStore(repo_path=str(repo))
    store.materialize(
        start_date=datetime(1990, 1, 1, tzinfo=UTC), end_date=datetime.now(UTC), feature_views=["item_title_stats"]
    )
    online = store.get_online_features(
        features=["item_title_stats:title_length"], entity_rows=[{"item_id": "i0000004"}]
    ).to_dict()
    assert expected is not None and online["title_length"] == [expected[0]]


def test_a_file_registry_is_moved_into_postgres_once_by_up(featured: Settings) -> None:
    """Feast's registry used to be a file under RECSTACK_HOME: `recstack up` copies its definitions (materialization
    intervals included) into the SQL registry every node reads, once, and renames the file."""
    from feast.infra.registry.registry import Registry
    from feast.repo_config import RegistryConfig

    store = feast_store.open_store(featured)
    project, current = store.project, store.registry
    path = featured.feast_registry_file
    path.parent.mkdir(parents=True, exist_ok=True)
    old = Registry(project, RegistryConfig(registry_type="file", path=str(path)), repo_path=None)
    for entity in current.list_entities(project, allow_cache=False):
        old.apply_entity(entity, project, commit=False)
    for data_source in current.list_data_sources(project, allow_cache=False):
        old.apply_data_source(data_source, project, commit=False)
    for view in current.list_feature_views(project, allow_cache=False):
        old.apply_feature_view(view, project, commit=False)
    for service in current.list_feature_services(project, allow_cache=False):
        old.apply_feature_service(service, project, commit=False)
    old.commit()
    intervals = {v.name: v.materialization_intervals for v in current.list_feature_views(project, allow_cache=False)}
    assert any(intervals.values())
    with psycopg.connect(stack.postgres_dsn(featured), autocommit=True) as conn:
        conn.execute("DROP SCHEMA feast CASCADE")  # a stack from before: nothing in Postgres yet
        conn.execute("CREATE SCHEMA feast")

    first = cli("up")
    assert first.returncode == 0, first.stderr
    assert "definitions moved" in first.stdout
    assert not path.exists() and path.with_name("registry.db.moved").is_file()
    moved = feast_store.open_store(featured)
    assert moved.get_feature_service("ranking_v1").name == "ranking_v1"
    assert {
        v.name: v.materialization_intervals for v in moved.registry.list_feature_views(project, allow_cache=False)
    } == intervals
    again = cli("up")
    assert again.returncode == 0 and "definitions moved" not in again.stdout
