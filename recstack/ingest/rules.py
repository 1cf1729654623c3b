"""Row-level rules every stored event obeys, each written once: the validation gate counts the rows of the events
table that break them (``condition``, SQL), the importers reject such rows with file and line (``broken``, pandas),
and the API refuses such feedback (the constants). An import that passes these cannot fail the gate's row rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

# Older timestamps are unit or clock errors (0 is 1970: the public ml-latest-small has 14 such ratings).
EARLIEST_EVENT = datetime(1990, 1, 1, tzinfo=UTC)
# Clock skew allowed between the producers of events and the database.
FUTURE_TOLERANCE = timedelta(minutes=5)
# Every rating is on this scale (importers map other scales onto it, e.g. MovieLens's half stars).
RATING_MIN, RATING_MAX = 1.0, 5.0


@dataclass(frozen=True)
class RowRule:
    """One rule on single events: its gate metric name, the reason a rejected row gets, and the same test as SQL
    (over ``events e``, true for rows that break it) and as pandas (over a frame with ``occurred_at`` (UTC),
    ``event_type`` and ``value`` columns, at time ``now``)."""

    name: str
    reason: str
    condition: str
    broken: Callable[[pd.DataFrame, pd.Timestamp], pd.Series]


EVENT_ROW_RULES: tuple[RowRule, ...] = (
    RowRule(
        name=f"events_before_{EARLIEST_EVENT.year}",
        reason=f"occurred_at: before {EARLIEST_EVENT:%Y-%m-%d}",
        condition=f"e.occurred_at < '{EARLIEST_EVENT.isoformat()}'",
        broken=lambda events, now: events["occurred_at"] < pd.Timestamp(EARLIEST_EVENT),
    ),
    RowRule(
        name="events_in_future",
        reason=f"occurred_at: more than {FUTURE_TOLERANCE.total_seconds() / 60:g} minutes in the future",
        condition=f"e.occurred_at > now() + interval '{FUTURE_TOLERANCE.total_seconds():g} seconds'",
        broken=lambda events, now: events["occurred_at"] > now + FUTURE_TOLERANCE,
    ),
    RowRule(
        name="ratings_out_of_range",
        reason=f"value: rating events need {RATING_MIN:g}..{RATING_MAX:g}",
        condition=f"e.event_type = 'rating' AND (e.value IS NULL OR e.value NOT BETWEEN {RATING_MIN} AND {RATING_MAX})",
        broken=lambda events, now: (
            (events["event_type"] == "rating") & ~pd.to_numeric(events["value"]).between(RATING_MIN, RATING_MAX)
        ),
    ),
)


def broken_rules(events: pd.DataFrame, now: datetime | None = None) -> list[tuple[pd.Series, str]]:
    """(mask of the rows that break the rule, its reason) for every rule, in order. A missing time (NaT) breaks no
    rule here: the parsers reject it as unparsable first."""
    at = pd.Timestamp(now or datetime.now(UTC))
    return [(rule.broken(events, at).fillna(False).astype(bool), rule.reason) for rule in EVENT_ROW_RULES]
