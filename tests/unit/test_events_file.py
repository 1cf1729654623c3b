"""Events files: documented columns, per-line rejects, clear errors for unusable files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from recstack.ingest.events_file import read_events_file
from recstack.ingest.records import SourceFormatError

GOOD = [
    {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "occurred_at": "2026-03-01T10:00:00Z"},
    {
        "event_id": "e2",
        "user_id": "u1",
        "item_id": "i2",
        "event_type": "rating",
        "occurred_at": "1772359200",
        "value": "4",
    },
]


def test_csv_with_context_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(GOOD)
    frame["device"] = ["mobile", ""]
    frame["context"] = ['{"page": "home"}', ""]
    frame.to_csv(tmp_path / "events.csv", index=False)
    batch = read_events_file(tmp_path / "events.csv")
    assert batch.rejects == []
    assert list(batch.events["event_id"]) == ["e1", "e2"]
    assert json.loads(batch.events["context"].iloc[0]) == {"page": "home", "device": "mobile"}
    assert batch.events["value"].iloc[1] == 4.0 and pd.isna(batch.events["value"].iloc[0])
    assert str(batch.events["occurred_at"].iloc[1]) == "2026-03-01 10:00:00+00:00"  # unix seconds read as UTC


def test_parquet_rows_are_numbered(tmp_path: Path) -> None:
    rows = [*GOOD, {**GOOD[0], "event_id": "e3", "event_type": "teleport"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "events.parquet")
    batch = read_events_file(tmp_path / "events.parquet")
    assert len(batch.events) == 2
    assert [r.line for r in batch.rejects] == [3] and "row 3" in batch.rejects[0].reason


def test_bad_rows_are_rejected_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(
        "event_id,user_id,item_id,event_type,occurred_at,value\n"
        "e1,u1,i1,view,2026-03-01T10:00:00,\n"
        "e2,,i1,view,2026-03-01T10:00:00,\n"  # line 3: empty user
        "e3,u1,i1,rating,2026-03-01T10:00:00,\n"  # line 4: rating without value
        "e4,u1,i1,like,yesterday,\n"  # line 5: bad time
        f"e5,{'x' * 129},i1,like,2026-03-01T10:00:00,\n"  # line 6: id too long
    )
    batch = read_events_file(tmp_path / "events.csv")
    assert list(batch.events["event_id"]) == ["e1"]
    assert [(r.line, r.reason.split(":")[0]) for r in batch.rejects] == [
        (3, "user_id"),
        (4, "value"),
        (5, "occurred_at"),
        (6, "user_id"),
    ]


def test_missing_columns_and_unknown_types_are_fatal(tmp_path: Path) -> None:
    pd.DataFrame([{"event_id": "e1", "user_id": "u1"}]).to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(SourceFormatError, match="item_id, event_type, occurred_at"):
        read_events_file(tmp_path / "partial.csv")
    (tmp_path / "events.json").write_text("{}")
    with pytest.raises(SourceFormatError, match=r"\.parquet"):
        read_events_file(tmp_path / "events.json")


def test_rows_the_validation_gate_would_refuse_are_rejected_with_their_line(tmp_path: Path) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    (tmp_path / "events.csv").write_text(
        "event_id,user_id,item_id,event_type,occurred_at,value\n"
        "e1,u1,i1,view,2026-03-01T10:00:00Z,\n"
        "e2,u1,i1,view,0,\n"  # line 3: unix 0 is 1970
        "e3,u1,i1,view,1989-12-31T23:59:59Z,\n"  # line 4
        f"e4,u1,i1,view,{future},\n"  # line 5: an hour ahead
        "e5,u1,i1,rating,2026-03-01T10:00:00Z,7\n"  # line 6: off the rating scale
        "e6,u1,i1,view,1990-01-01T00:00:00Z,\n"  # the first accepted instant
    )
    batch = read_events_file(tmp_path / "events.csv")
    assert list(batch.events["event_id"]) == ["e1", "e6"]
    assert [(r.file, r.line, r.reason) for r in batch.rejects] == [
        ("events.csv", 3, "occurred_at: before 1990-01-01"),
        ("events.csv", 4, "occurred_at: before 1990-01-01"),
        ("events.csv", 5, "occurred_at: more than 5 minutes in the future"),
        ("events.csv", 6, "value: rating events need 1..5"),
    ]
