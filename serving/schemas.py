"""HTTP request and response bodies, named by role. Validation here is the API's first line of defence:
ids are non-empty, at most 128 characters, without control characters; unknown fields are refused (422).

FastAPI validates bodies in pydantic's Python mode (the JSON is decoded first), where a strict ``datetime`` refuses
every string: times are therefore parsed here (``Timestamp``), the rest of each model stays strict."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from recstack.ingest.rules import EARLIEST_EVENT, FUTURE_TOLERANCE, RATING_MAX, RATING_MIN
from recstack.stages.rerank import LONG_TAIL_MIN_BOUNDS, MMR_LAMBDA_BOUNDS, PROVIDER_SHARE_BOUNDS

EventType = Literal["view", "click", "like", "dislike", "rating", "purchase", "skip"]
Domain = Literal["movies", "products", "music", "articles"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The same rule as a JSON-schema pattern, so the OpenAPI document says what the validator refuses.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
_PRINTABLE_IN_SCHEMA = Field(json_schema_extra={"pattern": PRINTABLE})
MAX_BODY_BYTES = 64 * 1024


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, strip_whitespace=False),
    AfterValidator(_no_control_chars),
    _PRINTABLE_IN_SCHEMA,
]
ShortText = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_no_control_chars), _PRINTABLE_IN_SCHEMA
]
_UNIX_SECONDS = re.compile(r"^[+-]?\d+(\.\d*)?$")
TIME_FORMATS = "an ISO-8601 time (2026-11-30T10:00:00Z, an offset, or no zone = UTC) or unix seconds"


def _parse_time(value: object) -> object:
    """ISO-8601 strings (``Z``, an offset or no zone) and unix seconds (a number or a numeric string) as datetimes.

    Numbers are always seconds: pydantic's lax parser would read values past 2e10 as milliseconds.
    """
    if isinstance(value, datetime) or value is None:
        return value
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str) and _UNIX_SECONDS.match(value.strip()):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str):
            return datetime.fromisoformat(value.strip())
    except (ValueError, OverflowError, OSError):
        pass
    raise ValueError(f"expected {TIME_FORMATS}, got {value!r}"[:200])


def _whole(value: object) -> object:
    """JSON has one number type and JSON Schema's ``integer`` includes 28.0: take integral floats as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A count from a JSON body (k, minimum items): an integer, written 28 or 28.0; 28.5 and "28" stay errors.
Count = Annotated[int, BeforeValidator(_whole)]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# A point in time from a JSON body; always timezone-aware (no zone = UTC, never the server's local time).
Timestamp = Annotated[datetime, BeforeValidator(_parse_time), AfterValidator(_aware)]


class StrictModel(BaseModel):
    """Unknown fields are errors, and no silent coercion of numbers from strings or floats."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RequestContext(StrictModel):
    """Request-time context; feeds the context features (hour, weekday, device, locale), and is logged with the slate
    so the ranker learns from the context of the requests its training feedback answered."""

    device: Literal["mobile", "desktop", "tv", "tablet"] | None = None
    # en_US or BCP 47's en-US, any case: one spelling (en_US) in the features (recstack.features.transforms).
    locale: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z]{2}([_-][a-zA-Z]{2})?$")] | None = Field(
        default=None, description="A language and an optional region: de, de_DE or de-DE."
    )
    timestamp: Timestamp | None = Field(
        default=None, description=f"Defaults to the time the request arrives; {TIME_FORMATS}."
    )


class RecommendFilters(StrictModel):
    """Whitelisted filters, applied inside the retrieval query."""

    categories: list[ShortText] | None = Field(default=None, max_length=20)
    providers: list[ExternalId] | None = Field(default=None, max_length=20)


class RerankOverrides(StrictModel):
    """Per-request rerank knobs, within the same bounds as the serving config; unset fields keep the config's (or the
    experiment variant's) values."""

    mmr_lambda: float | None = Field(
        default=None, ge=MMR_LAMBDA_BOUNDS[0], le=MMR_LAMBDA_BOUNDS[1], description="1 = relevance only, 0 = diversity."
    )
    max_provider_share: float | None = Field(
        default=None,
        gt=PROVIDER_SHARE_BOUNDS[0],
        le=PROVIDER_SHARE_BOUNDS[1],
        description="Cap on one provider's share.",
    )
    # The bounds before the validator, so the OpenAPI document states them (minimum/maximum).
    long_tail_min: (
        Annotated[int, Field(ge=LONG_TAIL_MIN_BOUNDS[0], le=LONG_TAIL_MIN_BOUNDS[1]), BeforeValidator(_whole)] | None
    ) = Field(default=None, description="Minimum long-tail items in the slate.")
    # additionalProperties false: with a key pattern, JSON Schema would otherwise allow any value under other keys.
    boost: (
        Annotated[
            dict[ExternalId, Annotated[float, Field(ge=0.0, le=10.0)]],
            Field(json_schema_extra={"additionalProperties": False}),
        ]
        | None
    ) = Field(default=None, max_length=50, description="item_id -> score multiplier (0 buries an item, 10 at most).")


class RecommendRequest(StrictModel):
    user_id: ExternalId
    k: Count = Field(default=10, ge=1, le=100)
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


class SimilarItems(BaseModel):
    item_id: str
    items: list[RecommendedItem]


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
    cached: bool = Field(
        default=False,
        description="The slate served to the same user for the same request shape a few seconds ago (result cache); "
        "it is logged as a new impression under this request_id.",
    )


class FeedbackEvent(StrictModel):
    event_id: ExternalId
    user_id: ExternalId
    item_id: ExternalId
    type: EventType
    value: float | None = Field(default=None, ge=RATING_MIN, le=RATING_MAX)
    request_id: ExternalId | None = None
    occurred_at: Timestamp | None = Field(default=None, description=f"Defaults to now; {TIME_FORMATS}.")

    @field_validator("occurred_at")
    @classmethod
    def _storable_time(cls, when: datetime | None) -> datetime | None:
        """The events' row rules (recstack/ingest/rules.py), which the validation gate checks on stored events."""
        if when is not None and when > datetime.now(UTC) + FUTURE_TOLERANCE:
            raise ValueError(f"is more than {FUTURE_TOLERANCE.total_seconds() / 60:g} minutes in the future")
        if when is not None and when < EARLIEST_EVENT:
            raise ValueError(f"is before {EARLIEST_EVENT:%Y-%m-%d}")
        return when

    @model_validator(mode="after")
    def _check_value(self) -> FeedbackEvent:
        if self.type == "rating" and self.value is None:
            raise ValueError(f"value is required for rating events ({RATING_MIN:g}..{RATING_MAX:g})")
        return self


class FeedbackBatch(StrictModel):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=500)


class ErrorDetail(BaseModel):
    field: str
    message: str


class FeedbackResult(BaseModel):
    """One event's outcome; ``rejected`` only in a batch (a single event answers 404/409), with ``error`` saying
    which field and why; nothing of a rejected event is stored."""

    event_id: str
    status: Literal["created", "duplicate", "rejected"]
    error: ErrorDetail | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: what went wrong and, for validation errors, which field."""

    error: str
    details: list[ErrorDetail] = Field(default_factory=list)
