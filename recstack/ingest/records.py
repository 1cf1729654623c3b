"""The normalized shape every importer produces and the loader writes: one contract for all sources."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

EVENT_TYPES: tuple[str, ...] = ("view", "click", "like", "dislike", "rating", "purchase", "skip")
DOMAINS: tuple[str, ...] = ("movies", "products", "music", "articles")
MAX_ID_LEN = 128

# Column order of each frame, as the loader COPYs them.
USER_COLUMNS = ["external_id", "attributes", "created_at"]
ITEM_COLUMNS = [
    "external_id",
    "domain",
    "title",
    "categories",
    "description",
    "provider_id",
    "attributes",
    "created_at",
]
EVENT_COLUMNS = [
    "event_id",
    "user_external_id",
    "item_external_id",
    "event_type",
    "value",
    "occurred_at",
    "context",
    "source_file",
    "source_line",
]


@dataclass(frozen=True)
class Reject:
    """A row that was not loaded: where it came from and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class Batch:
    """Users, items and events read from one source, ready to load.

    Frames use the column lists above. ``attributes``/``context`` are JSON strings, ``categories`` a list of str,
    timestamps tz-aware UTC pandas Timestamps, ``value`` float or NaN. ``source_file``/``source_line`` let the loader
    report rows that the database rejects (e.g. an event naming an unknown item) by file and line.
    ``rows_read`` counts data rows read from the source files (header lines excluded).
    """

    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    rows_read: int = 0


class SourceFormatError(ValueError):
    """A source that cannot be imported at all (unreadable, wrong layout): nothing is loaded."""


def empty_frame(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
