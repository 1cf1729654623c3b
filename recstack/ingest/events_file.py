"""Interaction events from a CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``) file.

| column        | required | meaning                                                                   |
|---------------|----------|---------------------------------------------------------------------------|
| `event_id`    | yes      | unique id of the event (1-128 chars); re-imports skip ids already stored  |
| `user_id`     | yes      | external user id (1-128 chars); unknown users are created                 |
| `item_id`     | yes      | external item id; must exist in the catalog, else the row is rejected     |
| `event_type`  | yes      | view, click, like, dislike, rating, purchase or skip                      |
| `occurred_at` | yes      | ISO-8601 (no zone = UTC) or unix seconds; from 1990, not in the future    |
| `value`       | rating   | 1..5 for `rating` events; ignored for the others                          |
| `device`      | no       | mobile, desktop, tv or tablet (event context; other values train "other") |
| `locale`      | no       | e.g. en_US or en-US (goes into the event context)                         |
| `context`     | no       | a JSON object with more context fields                                    |
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recstack.ingest.records import (
    EVENT_COLUMNS,
    EVENT_TYPES,
    ITEM_COLUMNS,
    MAX_ID_LEN,
    USER_COLUMNS,
    Batch,
    Reject,
    SourceFormatError,
    empty_frame,
)
from recstack.ingest.rules import broken_rules

REQUIRED = ["event_id", "user_id", "item_id", "event_type", "occurred_at"]
SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _read(path: Path) -> tuple[pd.DataFrame, int, str]:
    """The raw frame, the line/row number of its first data row, and the unit ("line" or "row")."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path).astype(object), 1, "row"
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]), 2, "line"
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise SourceFormatError(f"{path}: cannot be read ({err})") from None
    raise SourceFormatError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _times(column: pd.Series) -> pd.Series:
    text = column.astype("string").str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    parsed = pd.to_datetime(text.where(numeric.isna()), errors="coerce", utc=True, format="ISO8601")
    from_unix = pd.to_datetime(numeric, unit="s", errors="coerce", utc=True)
    return parsed.fillna(from_unix)


def _context(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """JSON context per row from `context`, `device`, `locale`; and a mask of rows whose context is not an object."""
    bad = pd.Series(False, index=frame.index)
    out = []
    for idx in frame.index:
        ctx: dict[str, object] = {}
        raw = frame.at[idx, "context"] if "context" in frame else None
        if isinstance(raw, str) and raw.strip():
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                bad[idx] = True
                parsed = {}
            ctx.update(parsed)
        for key in ("device", "locale"):
            value = frame.at[idx, key] if key in frame else None
            if isinstance(value, str) and value:
                ctx[key] = value
        out.append(json.dumps(ctx))
    return pd.Series(out, index=frame.index), bad


def read_events_file(path: Path) -> Batch:
    """Parse an events file into a Batch of events; bad rows become Rejects with their line (or row) number."""
    raw, first, unit = _read(path)
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise SourceFormatError(
            f"{path.name}: missing required column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}"
        )
    raw.index = np.arange(first, first + len(raw))
    ids = {c: raw[c].astype("string").str.strip() for c in ("event_id", "user_id", "item_id", "event_type")}
    when = _times(raw["occurred_at"])
    value = pd.to_numeric(raw["value"], errors="coerce") if "value" in raw else pd.Series(np.nan, index=raw.index)
    context, bad_context = _context(raw)
    problems = [
        *[
            (
                (ids[c].isna() | (ids[c].str.len() == 0) | (ids[c].str.len() > MAX_ID_LEN)).fillna(True),
                f"{c}: empty or longer than {MAX_ID_LEN} characters",
            )
            for c in ("event_id", "user_id", "item_id")
        ],
        (~ids["event_type"].isin(EVENT_TYPES).fillna(False), f"event_type: not one of {', '.join(EVENT_TYPES)}"),
        (when.isna(), "occurred_at: not an ISO-8601 time or unix seconds"),
        *broken_rules(pd.DataFrame({"occurred_at": when, "event_type": ids["event_type"], "value": value})),
        (bad_context, "context: not a JSON object"),
    ]
    rejected = pd.Series(False, index=raw.index)
    rejects: list[Reject] = []
    for mask, reason in problems:
        new = mask.to_numpy(dtype=bool) & ~rejected.to_numpy()
        rejects += [
            Reject(path.name, int(n), f"{unit} {n}: {reason}" if unit == "row" else reason) for n in raw.index[new]
        ]
        rejected |= mask.to_numpy(dtype=bool)
    ok = ~rejected.to_numpy()
    events = pd.DataFrame(
        {
            "event_id": ids["event_id"][ok].astype(object),
            "user_external_id": ids["user_id"][ok].astype(object),
            "item_external_id": ids["item_id"][ok].astype(object),
            "event_type": ids["event_type"][ok].astype(object),
            "value": value[ok].where(ids["event_type"][ok] == "rating"),
            "occurred_at": when[ok],
            "context": context[ok],
            "source_file": path.name,
            "source_line": raw.index[ok],
        }
    )
    return Batch(
        users=empty_frame(USER_COLUMNS),
        items=empty_frame(ITEM_COLUMNS),
        events=events[EVENT_COLUMNS],
        rejects=sorted(rejects, key=lambda r: r.line),
        rows_read=len(raw),
    )
