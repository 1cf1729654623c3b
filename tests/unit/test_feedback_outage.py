"""Feedback while Postgres is restarting, unreachable or out of disk (found by bench/bench_faults.py): the event is
not stored, and the answer says "retry" (503 with Retry-After, a JSON body) instead of a 500 that reads as a bug.
Retrying is safe: events are idempotent by event_id."""

from __future__ import annotations

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors
from psycopg_pool import PoolTimeout

from recstack.settings import Settings
from serving.http import create_api
from serving.schemas import FeedbackEvent, FeedbackResult

OUTAGES = [
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    errors.AdminShutdown("terminating connection due to administrator command"),
    errors.DiskFull('could not extend file "base/16384/16502": No space left on device'),
    PoolTimeout("couldn't get a connection after 3.00 sec"),
]


class FailingSink:
    """A backend whose store fails the way Postgres does mid-outage (and whose sink may fail to open at all)."""

    def __init__(self, error: Exception, when: str = "record") -> None:
        self.error, self.when = error, when
        self.recommender = self.impressions = self

    def feedback_sink(self) -> FailingSink:
        if self.when == "open":
            raise self.error
        return self

    def record(self, event: FeedbackEvent) -> FeedbackResult:
        raise self.error


def client(error: Exception, when: str = "record") -> TestClient:
    api = create_api(FailingSink(error, when), Settings(api_key=None))  # type: ignore[arg-type]
    return TestClient(api, raise_server_exceptions=False)


EVENT = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "like"}


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("when", ["record", "open"])
def test_feedback_during_a_store_outage_is_503_retry_after(error: Exception, when: str) -> None:
    response = client(error, when).post("/feedback", json=EVENT)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert "retry" in response.json()["error"]


def test_a_batch_during_a_store_outage_is_503_retry_after() -> None:
    response = client(OUTAGES[0]).post("/feedback/batch", json={"events": [EVENT, {**EVENT, "event_id": "e2"}]})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"


def test_other_errors_stay_500() -> None:
    """Only store outages are "retry": a bug is still a 500 (JSON, no internals)."""
    response = client(ValueError("a bug")).post("/feedback", json=EVENT)
    assert response.status_code == 500
