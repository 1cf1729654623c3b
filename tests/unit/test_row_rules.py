"""The events' row rules are written once (recstack/ingest/rules.py): the validation gate counts them, the importers
reject them, the API refuses them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from pydantic import ValidationError

from recstack.ingest.rules import EVENT_ROW_RULES, broken_rules
from serving.schemas import FeedbackEvent
from validation.suites import all_specs


def test_the_events_suite_counts_every_row_rule_and_can_list_its_rows() -> None:
    events = all_specs()["events"]
    assert events.metrics_sql is not None
    for rule in EVENT_ROW_RULES:
        assert events.metric_bounds[rule.name] == (0, 0)
        assert f"count(*) FILTER (WHERE {rule.condition}) AS {rule.name}" in events.metrics_sql
        assert events.row_conditions[rule.name] == rule.condition
    assert "events_before_1990" in events.metric_bounds  # the name `recstack validate` has always printed


def test_each_rule_refuses_its_rows_only() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "occurred_at": pd.to_datetime(
                ["1970-01-01", "1990-01-01", "2026-12-01 00:04:59", "2026-12-01 00:05:01", "2026-01-01", "NaT"],
                utc=True,
                format="ISO8601",
            ),
            "event_type": ["view", "view", "view", "view", "rating", "view"],
            "value": [None, None, None, None, 5.5, None],
        }
    )
    masks = {reason.split(":")[0] + str(n): list(mask) for n, (mask, reason) in enumerate(broken_rules(frame, now))}
    assert masks == {
        "occurred_at0": [True, False, False, False, False, False],
        "occurred_at1": [False, False, False, True, False, False],
        "value2": [False, False, False, False, True, False],
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"occurred_at": datetime(1970, 1, 1, tzinfo=UTC)}, "occurred_at"),
        ({"occurred_at": datetime.now(UTC) + timedelta(hours=1)}, "occurred_at"),
        ({"type": "rating", "value": 5.5}, "value"),
    ],
)
def test_feedback_breaking_a_row_rule_is_refused(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        FeedbackEvent.model_validate({"event_id": "e", "user_id": "u", "item_id": "i", "type": "like", **fields})
    assert [e["loc"] for e in info.value.errors()] == [(field,)]
