"""The HTTP app (FastAPI): routes, the guard every request passes (API key, body size, JSON errors, metrics) and the
error bodies. The routes call a ``Backend``: the recommender (serving/orchestrate.py), the stage callers for similar
items and readiness, the feedback sink and the impression log (serving/feedback.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from recstack import stack
from recstack.settings import Settings
from serving import metrics
from serving.callers import Callers
from serving.feedback import FeedbackSink, ImpressionLog, store_outages
from serving.orchestrate import Recommender, Unavailable
from serving.schemas import (
    MAX_BODY_BYTES,
    PRINTABLE,
    ErrorDetail,
    ErrorResponse,
    FeedbackBatch,
    FeedbackEvent,
    FeedbackResult,
    RecommendRequest,
    RecommendResponse,
    SimilarItems,
)

log = logging.getLogger("recstack.serving")
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc"}
KNOWN_PATHS = OPEN_PATHS | {"/recommend", "/feedback", "/feedback/batch"}
TOO_BIG = f"request body larger than {MAX_BODY_BYTES} bytes"
OVERLOADED = "too many recommendations in progress here: retry shortly"
STORE_DOWN = (
    "The event store is unavailable (restarting, unreachable, disk full): the failing event and those after it were "
    "not stored; resend with the same event ids (Retry-After: 1)"
)

# How long /readyz waits for each of its checks, run side by side: a stage with no replica yet (starting, restarting)
# is "starting" after that, and its check stays the one in flight for the next probe (serving/callers.py
# _one_at_a_time: a check per probe left waiting in the handle's queue counted as load on that stage to Serve's
# autoscaler).
READY_CHECK_S = 2.0


class Backend:
    """What the routes call: recommendations, similar items, readiness, feedback (the sink opens on first use)."""

    def __init__(self, settings: Settings, recommender: Recommender, callers: Callers) -> None:
        self.settings, self.recommender, self.callers = settings, recommender, callers
        self._feedback: FeedbackSink | None = None
        self.impressions = ImpressionLog(self.feedback_sink)

    async def similar(self, item_id: str, k: int) -> list[dict[str, Any]] | None:
        if self.callers.similar is None:
            raise RuntimeError("no similar-items caller")
        return await self.callers.similar(item_id, k)

    async def ready(self) -> dict[str, Any]:
        """Each check's state by name: the stores, the model ("loaded"), and in graph mode the stage replicas (up and
        warmed: "ok"). The checks run side by side and each answers within READY_CHECK_S: a stage with no replica
        yet (starting, restarting) is "starting", its one readiness call left in flight for the next probe."""
        names = ["postgres", "redis", *self.callers.ready]
        states = await asyncio.gather(
            self._store_state(stack.check_postgres),
            self._store_state(stack.check_redis),
            *(self._stage_state(name, check) for name, check in self.callers.ready.items()),
        )
        return dict(zip(names, states, strict=True))

    async def _store_state(self, check: Callable[[Settings], None]) -> str:
        try:  # the store clients' own connect timeouts (RECSTACK_CONNECT_TIMEOUT_S) bound these threads
            await asyncio.wait_for(asyncio.to_thread(check, self.settings), READY_CHECK_S)
            return "ok"
        except TimeoutError:
            return f"unreachable: no answer within {READY_CHECK_S:g} s"
        except Exception as err:
            return f"unreachable: {err}"

    @staticmethod
    async def _stage_state(name: str, check: Callable[[], Awaitable[bool]]) -> str:
        try:
            ok = await asyncio.wait_for(check(), READY_CHECK_S)
        except TimeoutError:
            return f"starting: no answer within {READY_CHECK_S:g} s"
        except Exception as err:
            return f"error: {err}"
        if name == "model":
            return "loaded" if ok else "no promoted model"
        return "ok" if ok else "starting"

    def feedback_sink(self) -> FeedbackSink:
        if self._feedback is None:
            self._feedback = FeedbackSink(self.settings)
        return self._feedback


# -- HTTP -------------------------------------------------------------------------------------------------------
def _error(
    status: int, error: str, details: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=error, details=details or [])  # type: ignore[arg-type]
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


class Guard:
    """API key, body size limit, JSON 500s and per-endpoint metrics for every request, as a plain ASGI middleware:
    Starlette's ``@app.middleware("http")`` (BaseHTTPMiddleware) runs each request through an extra task and memory
    streams, CPU every /recommend paid for nothing."""

    def __init__(self, app: Any, api_key: str | None = None, max_inflight: int = 0) -> None:
        self.app, self.api_key = app, (api_key.encode() if api_key else None)
        self.max_inflight, self.inflight = max_inflight, 0  # /recommend requests in this process (0: no bound)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in KNOWN_PATHS else "/items/{id}/similar" if path.startswith("/items/") else "other"
        status = {"code": 500, "sent": False}

        async def send_counted(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        counted = path == "/recommend"
        try:
            if counted and self.max_inflight and self.inflight >= self.max_inflight:
                counted = False  # admission control: answered now, never queued behind the work in flight
                metrics.FALLBACKS.labels("shed_overload").inc()
                await _error(503, OVERLOADED, headers={"Retry-After": "1"})(scope, receive, send_counted)
                return
            self.inflight += counted
            refused, receive = await self._checked(scope, receive)
            await (refused or self.app)(scope, receive, send_counted)
        except Exception:  # never a bare 500 page: a JSON error without internals
            log.exception("unhandled error on %s", path)
            if not status["sent"]:
                await _error(500, "internal error; the request was not processed")(scope, receive, send_counted)
        finally:
            self.inflight -= counted
            metrics.RESPONSES.labels(endpoint, str(status["code"])).inc()
            metrics.REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)

    async def _checked(self, scope: dict[str, Any], receive: Any) -> tuple[JSONResponse | None, Any]:
        """(a 401/413 answer or None, the ``receive`` for the app: one replaying the body read to measure it)."""
        headers = dict(scope["headers"])
        if self.api_key and scope["path"] not in OPEN_PATHS and headers.get(b"x-api-key") != self.api_key:
            return _error(401, "missing or wrong X-API-Key header"), receive
        length = headers.get(b"content-length")
        too_big = length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES)
        if too_big or scope["method"] not in ("POST", "PUT", "PATCH"):
            return (_error(413, TOO_BIG) if too_big else None), receive
        chunks, size, more = [], 0, True
        while more:  # chunked bodies have no content-length: measure what arrives, stop at the limit
            message = await receive()
            if message["type"] != "http.request":
                return None, receive  # the client went away: let the app see the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                return _error(413, TOO_BIG), receive
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


def create_api(backend: Backend, settings: Settings) -> FastAPI:
    api = FastAPI(
        title="recstack",
        description="Personalized recommendations: retrieval (pgvector) -> features (Feast) -> ranking (CatBoost) "
        "-> rerank (diversity, provider fairness).",
        version="1.0",
        responses={
            400: {"model": ErrorResponse, "description": "A body that cannot be read (not UTF-8, not JSON)"},
            401: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
    )

    api.add_middleware(Guard, api_key=settings.api_key, max_inflight=settings.recommend_max_inflight)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        details = [{"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg"))} for e in err.errors()]
        return _error(422, "invalid request: fix the fields listed in details", details)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @api.post("/recommend", response_model=RecommendResponse, responses={503: {"model": ErrorResponse}})
    async def recommend(req: RecommendRequest) -> Any:
        """A slate of ``k`` items for the user; already-seen items are excluded. 503 (with Retry-After) only when
        not even the popular fallback can be served (overload, or stores down before any popular list was cached)."""
        try:
            response = await backend.recommender.recommend(req)
        except Unavailable as err:
            return _error(503, str(err), headers={"Retry-After": "1"})
        backend.impressions.add(response, req.context)
        return response

    @api.get(
        "/items/{item_id}/similar",
        response_model=SimilarItems,
        responses={404: {"model": ErrorResponse, "description": "Unknown item, or no vectors yet"}},
    )
    async def similar(
        item_id: Annotated[str, Path(min_length=1, max_length=128, pattern=PRINTABLE)],
        k: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> Any:
        """Items similar to ``item_id`` by collaborative and content vectors."""
        found = await backend.similar(item_id, k)
        if found is None:
            return _error(404, f"unknown item {item_id!r} (or no vectors yet: run `recstack train`)")
        return {"item_id": item_id, "items": found}

    @api.post(
        "/feedback",
        response_model=FeedbackResult,
        responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse, "description": STORE_DOWN}},
    )
    async def feedback(event: FeedbackEvent) -> Any:
        """Store one event (idempotent by event_id) and update the user's real-time state. A 2xx means the event is
        on disk; a 503 (with Retry-After) means it was not stored: send it again, with the same event_id."""
        return await _record(backend, [event], single=True)

    @api.post(
        "/feedback/batch",
        response_model=list[FeedbackResult],
        responses={
            207: {"model": list[FeedbackResult], "description": "Some events rejected (see each `error`)"},
            503: {"model": ErrorResponse, "description": STORE_DOWN},
        },
    )
    async def feedback_batch(batch: FeedbackBatch) -> Any:
        """Up to 500 events, one result per event in order: created, duplicate or rejected (with the field and the
        reason). Every event is tried: 200 when none was rejected, 207 when some were (the others are stored).
        Each event is stored once whatever the number of retries."""
        return await _record(backend, batch.events, single=False)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        """Stores reachable and a model loaded (503 otherwise, with which check failed)."""
        checks = await backend.ready()
        ok = checks.get("model") == "loaded" and all(v == "ok" for k, v in checks.items() if k != "model")
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "checks": checks})

    metrics_store = stack.redis_client(settings)  # connects on first use

    @api.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus metrics of every live replica (label ``replica``): stage latencies, fallbacks, degraded
        responses, result cache hits and misses, model version."""
        body = await asyncio.to_thread(metrics.render, metrics_store)
        return Response(body, media_type="text/plain; version=0.0.4")

    return api


async def _record(backend: Backend, events: list[FeedbackEvent], single: bool) -> Any:
    """Store ``events`` in order. A store outage answers 503 with Retry-After for the whole request (found by
    bench/bench_faults.py: Postgres restarting or its disk full was a 500): nothing after the failing event was
    tried, and the client may resend all of it, since events are idempotent by event_id."""
    try:
        return await _record_each(backend, events, single)
    except store_outages() as err:
        log.warning("feedback not stored, store unavailable (%s)", err)
        metrics.FEEDBACK.labels("unavailable").inc()
        return _error(503, "the event store is unavailable: retry shortly, same event_id", headers={"Retry-After": "1"})


async def _record_each(backend: Backend, events: list[FeedbackEvent], single: bool) -> Any:
    from recstack.features.realtime import EventConflict, UnknownItem

    sink = backend.feedback_sink()
    results = []
    for n, event in enumerate(events):
        where = "" if single else f"events.{n}."
        try:
            results.append(await asyncio.to_thread(sink.record, event))
            continue
        except UnknownItem as err:
            code, reason, detail = 404, str(err), ErrorDetail(field=f"{where}item_id", message="not in the catalog")
        except EventConflict as err:
            code, reason = 409, str(err)
            detail = ErrorDetail(field=f"{where}event_id", message="reused with another payload")
        if single:
            return _error(code, reason, [detail.model_dump()])
        metrics.FEEDBACK.labels("rejected").inc()
        results.append(FeedbackResult(event_id=event.event_id, status="rejected", error=detail))
    if single:
        return results[0].model_dump()
    body = [r.model_dump(exclude_none=True) for r in results]
    return JSONResponse(body, status_code=207 if any(r.status == "rejected" for r in results) else 200)
