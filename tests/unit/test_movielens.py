"""MovieLens parsing on folders in the published formats (generated: real MovieLens cannot be downloaded here)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from recstack.ingest.movielens import IdMapping, detect_layout, read_movielens
from recstack.ingest.records import SourceFormatError
from tests.movielens_files import corrupt_lines, write_movielens_1m, write_movielens_100k, write_movielens_latest


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_movielens_100k(tmp_path_factory.mktemp("ml") / "ml-100k")


def test_100k_has_the_real_counts(ml100k: Path) -> None:
    batch = read_movielens(ml100k)
    assert (len(batch.users), len(batch.items), len(batch.events)) == (943, 1682, 100_000)
    assert batch.rejects == []
    assert set(batch.events["event_type"]) == {"rating"}
    assert batch.events["value"].between(1, 5).all()
    assert batch.events["event_id"].is_unique
    assert set(batch.items["domain"]) == {"movies"}
    assert all(isinstance(c, list) and c == [g.lower() for g in c] for c in batch.items["categories"])


def test_layouts_are_detected_also_one_folder_down(tmp_path: Path, ml100k: Path) -> None:
    assert detect_layout(ml100k)[0].name == "ml-100k"
    assert detect_layout(ml100k.parent)[0].name == "ml-100k"  # the folder that holds the unzipped ml-100k/
    assert detect_layout(write_movielens_1m(tmp_path / "ml-1m"))[0].name == "ml-1m"
    assert detect_layout(write_movielens_latest(tmp_path / "ml-latest-small"))[0].name == "ml-latest"


def test_a_non_movielens_folder_is_refused_with_the_supported_layouts(tmp_path: Path) -> None:
    (tmp_path / "ratings.txt").write_text("1,2,3\n")
    with pytest.raises(SourceFormatError) as info:
        read_movielens(tmp_path)
    message = str(info.value)
    assert "u.data" in message and "ratings.dat" in message and "ratings.csv" in message


def test_corrupted_lines_are_rejected_by_line_number_and_the_rest_loads(tmp_path: Path) -> None:
    folder = write_movielens_100k(tmp_path / "ml-100k", users=50, items=80, ratings=2000)
    corrupt_lines(folder / "u.data", [5, 17, 1999])
    batch = read_movielens(folder)
    assert [(r.file, r.line) for r in batch.rejects] == [("u.data", 5), ("u.data", 17), ("u.data", 1999)]
    reasons = " | ".join(r.reason for r in batch.rejects)
    assert "expected 4 fields" in reasons and "user id" in reasons and "rating" in reasons
    assert len(batch.events) == 2000 - 3


def test_latest_half_stars_map_onto_1_to_5_and_keep_the_raw_value(tmp_path: Path) -> None:
    batch = read_movielens(write_movielens_latest(tmp_path / "ml-latest"))
    raw = batch.events["context"].map(lambda c: __import__("json").loads(c)["raw_rating"])
    assert batch.events["value"].between(1, 5).all()
    assert batch.events.loc[raw == 0.5, "value"].eq(1.0).all() and batch.events.loc[raw == 5.0, "value"].eq(5.0).all()
    assert batch.items["title"].str.contains(", The").any()  # quoted titles with commas parsed whole
    assert any(c == [] for c in batch.items["categories"])  # "(no genres listed)"


def test_latin1_titles_are_decoded(ml100k: Path) -> None:
    titles = read_movielens(ml100k).items["title"]
    assert titles.str.contains("Café").any() and titles.str.contains("Amélie").any()


def test_default_ids_are_the_namespaced_ones_earlier_imports_stored(tmp_path: Path) -> None:
    batch = read_movielens(write_movielens_1m(tmp_path / "ml-1m", users=5, items=8, ratings=20))
    assert set(batch.users["external_id"]) == {f"ml-u{n}" for n in range(1, 6)}
    assert set(batch.items["external_id"]) == {f"ml-m{n}" for n in range(1, 9)}
    first = batch.events.iloc[0]
    user, movie = first["user_external_id"][4:], first["item_external_id"][4:]
    assert first["event_id"] == f"ml-{user}-{movie}-{int(first['occurred_at'].timestamp())}"


def test_an_empty_id_prefix_keeps_movielens_numbers(tmp_path: Path) -> None:
    batch = read_movielens(write_movielens_1m(tmp_path / "ml-1m", users=5, items=8, ratings=20), IdMapping(""))
    assert set(batch.users["external_id"]) == {str(n) for n in range(1, 6)}  # also users only in users.dat
    assert set(batch.items["external_id"]) == {str(n) for n in range(1, 9)}
    assert set(batch.events["user_external_id"]) <= set(batch.users["external_id"])
    assert batch.events["event_id"].is_unique and not batch.events["event_id"].str.startswith("ml-").any()
    assert IdMapping("").describe()[0] == "user ids: 1 -> 1"
    assert IdMapping("lens/").describe()[:2] == ["user ids: 1 -> lens/u1", "movie ids: 1 -> lens/m1"]


@pytest.mark.parametrize("prefix", ["has space", "tab\t", "x" * 33])
def test_an_unusable_id_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="id prefix"):
        IdMapping(prefix)


def test_ratings_the_validation_gate_would_refuse_are_rejected_by_line(tmp_path: Path) -> None:
    """The public ml-latest-small has 14 ratings at timestamp 0; the gate refuses events before 1990."""
    folder = write_movielens_latest(tmp_path / "ml-latest-small", users=20, items=30, ratings=200)
    lines = (folder / "ratings.csv").read_text().splitlines(keepends=True)
    zero = list(range(10, 24))  # 1-based line numbers (line 1 is the header)
    for n in zero:
        lines[n - 1] = ",".join(lines[n - 1].split(",")[:3]) + ",0\n"
    lines[99] = ",".join(lines[99].split(",")[:3]) + f",{int(time.time()) + 3600}\n"  # an hour ahead
    (folder / "ratings.csv").write_text("".join(lines))
    batch = read_movielens(folder)
    assert [(r.file, r.line) for r in batch.rejects] == [("ratings.csv", n) for n in [*zero, 100]]
    assert {r.reason for r in batch.rejects[:14]} == {"occurred_at: before 1990-01-01"}
    assert batch.rejects[14].reason == "occurred_at: more than 5 minutes in the future"
    assert len(batch.events) == 200 - 15
    assert batch.events["occurred_at"].min() >= pd.Timestamp("1990-01-01", tz="UTC")
