"""Timestamps in request bodies, through the real FastAPI app (``create_api``) with a stub backend: ISO-8601 strings
(``Z``, an offset, or no zone = UTC) and unix seconds are accepted; anything else is a 422 naming the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recstack.settings import Settings
from serving.http import create_api
from serving.schemas import FeedbackEvent, FeedbackResult, RecommendRequest, RecommendResponse, RequestContext

WHEN = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


class StubBackend:
    """What ``create_api`` calls, recording the validated bodies it receives."""

    def __init__(self) -> None:
        self.events: list[FeedbackEvent] = []
        self.requests: list[RecommendRequest] = []
        self.logged: list[tuple[str, RequestContext | None]] = []
        self.recommender, self.impressions = self, self

    def feedback_sink(self) -> StubBackend:
        return self

    def record(self, event: FeedbackEvent) -> FeedbackResult:
        self.events.append(event)
        return FeedbackResult(event_id=event.event_id, status="created")

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        self.requests.append(req)
        return RecommendResponse(
            request_id="r1", user_id=req.user_id, items=[], model_version=None, experiment=None, degraded=False
        )

    def add(self, response: RecommendResponse, context: RequestContext | None = None) -> None:
        self.logged.append((response.request_id, context))


@pytest.fixture()
def api() -> tuple[TestClient, StubBackend]:
    backend = StubBackend()
    return TestClient(create_api(backend, Settings(api_key=None))), backend  # type: ignore[arg-type]


def feedback(occurred_at: Any) -> dict[str, Any]:
    return {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "like", "occurred_at": occurred_at}


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-30T10:00:00Z",
        "2026-11-30T11:00:00+01:00",
        "2026-11-30T10:00:00",
        int(WHEN.timestamp()),
        float(WHEN.timestamp()),
    ],
)
def test_feedback_accepts_iso_8601_and_unix_seconds(api: tuple[TestClient, StubBackend], value: Any) -> None:
    client, backend = api
    response = client.post("/feedback", json=feedback(value))
    assert response.status_code == 200, response.text
    assert backend.events[0].occurred_at == WHEN
    assert backend.events[0].occurred_at.tzinfo is not None  # no zone = UTC, never the server's local time


def test_recommend_accepts_an_iso_8601_context_timestamp(api: tuple[TestClient, StubBackend]) -> None:
    client, backend = api
    for value in ("2026-11-30T10:00:00Z", "2026-11-30T10:00:00", int(WHEN.timestamp())):
        response = client.post("/recommend", json={"user_id": "u1", "context": {"timestamp": value}})
        assert response.status_code == 200, response.text
        context = backend.requests[-1].context
        assert context is not None and context.timestamp == WHEN


def test_a_slate_is_logged_with_the_context_of_its_request(api: tuple[TestClient, StubBackend]) -> None:
    """Training joins the logged context onto the feedback that answers the slate (by request_id)."""
    client, backend = api
    body = {"user_id": "u1", "context": {"device": "mobile", "locale": "de-DE"}}
    assert client.post("/recommend", json=body).status_code == 200
    request_id, context = backend.logged[-1]
    assert request_id == "r1" and context is not None and (context.device, context.locale) == ("mobile", "de-DE")


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-40T10:00:00Z", True, "2999-01-01T00:00:00Z", "1989-12-31T23:59:59Z", 0]
)
def test_bad_timestamps_are_a_422_naming_the_field(api: tuple[TestClient, StubBackend], value: Any) -> None:
    client, backend = api
    response = client.post("/feedback", json=feedback(value))
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["details"]] == ["occurred_at"]
    response = client.post("/recommend", json={"user_id": "u1", "context": {"timestamp": "yesterday"}})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["details"]] == ["context.timestamp"]
    assert backend.events == [] and backend.requests == []


def test_numbers_stay_strict_elsewhere(api: tuple[TestClient, StubBackend]) -> None:
    client, _ = api
    response = client.post("/recommend", json={"user_id": "u1", "k": "10"})
    assert response.status_code == 422 and response.json()["details"][0]["field"] == "k"


@pytest.mark.parametrize(("k", "ok"), [(28, True), (28.0, True), (28.5, False), ("28", False), (True, False)])
def test_k_is_any_json_integer_28_or_28_point_0_and_nothing_else(k: Any, ok: bool) -> None:
    # JSON Schema's `integer` (what the OpenAPI document says k is) includes 28.0; strict pydantic alone refuses it.
    if ok:
        assert RecommendRequest.model_validate({"user_id": "u1", "k": k}).k == 28
    else:
        with pytest.raises(ValueError, match="k"):
            RecommendRequest.model_validate({"user_id": "u1", "k": k})
