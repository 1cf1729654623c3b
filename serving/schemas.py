"""HTTP request and response bodies, named by role. Validation here is the API's first line of defence:
ids are non-empty, at most 128 characters, without control characters; unknown fields are refused (422)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

EventType = Literal["view", "click", "like", "dislike", "rating", "purchase", "skip"]
Domain = Literal["movies", "products", "music", "articles"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_BODY_BYTES = 64 * 1024


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, strip_whitespace=False), AfterValidator(_no_control_chars)
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_no_control_chars)]


class StrictModel(BaseModel):
    """Unknown fields are errors, and no silent coercion of numbers from strings or floats."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RequestContext(StrictModel):
    """Request-time context; feeds the context features (hour, weekday, device, locale)."""

    device: Literal["mobile", "desktop", "tv", "tablet"] | None = None
    locale: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(_[A-Z]{2})?$")] | None = None
    timestamp: datetime | None = Field(default=None, description="Defaults to the time the request arrives.")


class RecommendFilters(StrictModel):
    """Whitelisted filters, applied inside the retrieval query."""

    categories: list[ShortText] | None = Field(default=None, max_length=20)
    providers: list[ExternalId] | None = Field(default=None, max_length=20)


class RerankOverrides(StrictModel):
    """Per-request rerank knobs, within the same bounds as the serving config; unset fields keep the config's (or the
    experiment variant's) values."""

    mmr_lambda: float | None = Field(default=None, ge=0.0, le=1.0, description="1 = relevance only, 0 = diversity.")
    max_provider_share: float | None = Field(default=None, gt=0.0, le=1.0, description="Cap on one provider's share.")
    long_tail_min: int | None = Field(default=None, ge=0, le=10, description="Minimum long-tail items in the slate.")
    boost: dict[ExternalId, Annotated[float, Field(ge=0.0, le=10.0)]] | None = Field(
        default=None, max_length=50, description="item_id -> score multiplier (0 buries an item, 10 at most)."
    )


class RecommendRequest(StrictModel):
    user_id: ExternalId
    k: int = Field(default=10, ge=1, le=100)
    domain: Domain | None = None
    context: RequestContext | None = None
    exclude_item_ids: list[ExternalId] = Field(default_factory=list, max_length=500)
    filters: RecommendFilters | None = None
    explain: bool = False
    rerank: RerankOverrides | None = None


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str
    domain: str
    reasons: list[str] | None = None


class ExperimentAssignment(BaseModel):
    name: str
    variant: str


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str
    items: list[RecommendedItem]
    model_version: str | None
    experiment: ExperimentAssignment | None
    degraded: bool


class FeedbackEvent(StrictModel):
    event_id: ExternalId
    user_id: ExternalId
    item_id: ExternalId
    type: EventType
    value: float | None = Field(default=None, ge=1, le=5)
    request_id: ExternalId | None = None
    occurred_at: datetime | None = None

    @model_validator(mode="after")
    def _check_value_and_time(self) -> FeedbackEvent:
        if self.type == "rating" and self.value is None:
            raise ValueError("value is required for rating events (1..5)")
        if self.occurred_at is not None:
            when = self.occurred_at if self.occurred_at.tzinfo else self.occurred_at.replace(tzinfo=UTC)
            if when > datetime.now(UTC) + timedelta(minutes=5):
                raise ValueError("occurred_at is in the future")
        return self


class FeedbackBatch(StrictModel):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=500)


class FeedbackResult(BaseModel):
    event_id: str
    status: Literal["created", "duplicate"]


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: what went wrong and, for validation errors, which field."""

    error: str
    details: list[ErrorDetail] = Field(default_factory=list)
