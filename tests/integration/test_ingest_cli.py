"""`recstack ingest ...` as a user runs it: real CLI process, real embedded Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from recstack import stack
from recstack.settings import Settings
from tests.movielens_files import corrupt_lines, write_movielens_100k, write_movielens_latest

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recstack.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )


def counts(settings: Settings) -> tuple[int, int, int]:
    with psycopg.connect(stack.postgres_dsn(settings)) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM items), "
            "(SELECT count(*) FROM events WHERE event_type = 'rating')"
        ).fetchone()
    assert row is not None
    return row


def test_movielens_100k_loads_once(clean_db: Settings, tmp_path: Path) -> None:
    folder = write_movielens_100k(tmp_path / "ml-100k")
    first = cli("ingest", "movielens", str(folder))
    assert first.returncode == 0, first.stderr
    assert counts(clean_db) == (943, 1682, 100_000)
    assert "100,000" in first.stdout
    second = cli("ingest", "movielens", str(folder))
    assert second.returncode == 0, second.stderr
    assert counts(clean_db) == (943, 1682, 100_000)  # a second run adds 0 rows


def test_corrupted_lines_are_reported_and_the_good_rows_load(clean_db: Settings, tmp_path: Path) -> None:
    folder = write_movielens_100k(tmp_path / "ml-100k", users=60, items=90, ratings=3000)
    corrupt_lines(folder / "u.data", [10, 2500])
    result = cli("ingest", "movielens", str(folder))
    assert result.returncode == 0, result.stderr
    assert counts(clean_db)[2] == 2998
    assert "u.data:10:" in result.stdout and "u.data:2500:" in result.stdout


def test_non_movielens_folder_is_refused_and_nothing_changes(clean_db: Settings, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not ratings")
    result = cli("ingest", "movielens", str(tmp_path))
    assert result.returncode == 1
    assert "supported layouts" in result.stderr and "u.data" in result.stderr
    assert "Traceback" not in result.stderr
    assert counts(clean_db) == (0, 0, 0)


def test_events_file_import_rejects_unknown_items_by_line(clean_db: Settings, tmp_path: Path) -> None:
    folder = write_movielens_100k(tmp_path / "ml", users=20, items=30, ratings=200)
    assert cli("ingest", "movielens", str(folder)).returncode == 0
    events = tmp_path / "events.csv"
    events.write_text(
        "event_id,user_id,item_id,event_type,occurred_at\n"
        "x1,brand-new-user,ml-m1,like,2026-01-01T00:00:00Z\n"
        "x2,ml-u1,ml-m99999,view,2026-01-01T00:00:00Z\n"
    )
    result = cli("ingest", "events", str(events))
    assert result.returncode == 0, result.stderr
    assert "events.csv:3: item_id: unknown item 'ml-m99999'" in result.stdout
    with psycopg.connect(stack.postgres_dsn(clean_db)) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE external_id = 'brand-new-user'").fetchone() == (1,)


def test_id_prefix_choice_is_stored_and_shown_in_the_summary(clean_db: Settings, tmp_path: Path) -> None:
    folder = write_movielens_100k(tmp_path / "ml-100k", users=20, items=30, ratings=200)
    default = cli("ingest", "movielens", str(folder))
    assert default.returncode == 0, default.stderr
    assert "user ids: 1 -> ml-u1" in default.stdout and "movie ids: 1 -> ml-m1" in default.stdout
    plain = cli("ingest", "movielens", "--id-prefix", "", str(folder))
    assert plain.returncode == 0, plain.stderr
    assert "user ids: 1 -> 1" in plain.stdout
    with psycopg.connect(stack.postgres_dsn(clean_db)) as conn:
        users = {r[0] for r in conn.execute("SELECT external_id FROM users")}
        rated = conn.execute("SELECT count(*) FROM events e JOIN users u USING (user_id) WHERE u.external_id = '1'")
        assert rated.fetchone() == (sum(1 for line in (folder / "u.data").open() if line.split("\t")[0] == "1"),)
    assert {"1", "ml-u1"} <= users
    refused = cli("ingest", "movielens", "--id-prefix", "a b", str(folder))
    assert refused.returncode == 2 and "--id-prefix" in refused.stderr


def test_a_movielens_copy_with_1970_ratings_imports_what_the_gate_accepts(clean_db: Settings, tmp_path: Path) -> None:
    """The public ml-latest-small has 14 ratings at timestamp 0: rejected at import, so the gate then passes."""
    folder = write_movielens_latest(tmp_path / "ml-latest-small", users=20, items=30, ratings=200)
    lines = (folder / "ratings.csv").read_text().splitlines(keepends=True)
    for n in range(10, 24):
        lines[n - 1] = ",".join(lines[n - 1].split(",")[:3]) + ",0\n"
    (folder / "ratings.csv").write_text("".join(lines))
    result = cli("ingest", "movielens", str(folder))
    assert result.returncode == 0, result.stderr
    assert "ratings.csv:10: occurred_at: before 1990-01-01" in result.stdout
    assert counts(clean_db)[2] == 200 - 14
    validated = cli("validate", "--suite", "events", "--no-docs")
    assert validated.returncode == 0, validated.stdout


def test_validate_show_rows_lists_the_offending_events(clean_db: Settings, tmp_path: Path) -> None:
    folder = write_movielens_100k(tmp_path / "ml", users=20, items=30, ratings=200)
    assert cli("ingest", "movielens", str(folder)).returncode == 0
    with psycopg.connect(stack.postgres_dsn(clean_db), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, value, occurred_at) "
            "SELECT 'old-' || n, u.user_id, i.item_id, 'view', NULL, timestamptz '1970-01-01' + n * interval '1 day' "
            "FROM generate_series(1, 8) n, users u, items i WHERE u.external_id = 'ml-u1' AND i.external_id = 'ml-m2'"
        )
        conn.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, value, occurred_at) "
            "SELECT 'bad-rating', u.user_id, 1, 'rating', 9, now() FROM users u WHERE u.external_id = 'ml-u3'"
        )
    plain = cli("validate", "--suite", "events", "--no-docs")
    assert plain.returncode == 1 and "events_before_1990 = 8, expected 0..0" in plain.stdout
    assert "event_id=" not in plain.stdout
    shown = cli("validate", "--suite", "events", "--no-docs", "--show-rows")
    assert shown.returncode == 1
    listed = [line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("event_id=")]
    assert len([row for row in listed if row.startswith("event_id=old-")]) == 5  # a few rows per failed expectation
    assert any("user_id=ml-u1, item_id=ml-m2, event_type=view" in row for row in listed)
    assert "ratings_out_of_range = 1, expected 0..0" in shown.stdout
    assert any(row.startswith("event_id=bad-rating, user_id=ml-u3") and "value=9" in row for row in listed)
