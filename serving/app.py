"""HTTP API (FastAPI) and its Ray Serve application, in two shapes chosen in config (``mode``):

* ``graph``: Ingress -> Retriever -> FeatureLookup -> Ranker -> Reranker, one deployment per stage, each with
  fractional CPUs and its own autoscaling config, composed through DeploymentHandles;
* ``fused``: one Ingress deployment running the same stage classes in-process (no handle hops).

``build_app(args)`` is the Serve application builder: ``serve build serving.app:build_app -o serving/serve_config.yaml``
and ``serve run serving.app:build_app`` work, and ``recstack serve`` calls it. Nothing runs at import time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import MutableMapping
from typing import Annotated, Any, Literal, cast

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from recstack import ray_runtime, stack
from recstack.settings import Settings, get_settings
from recstack.stages.item_item import UserHistory
from recstack.stages.rerank import RerankParams
from serving import metrics
from serving.experiments import Experiment
from serving.result_cache import ResultCache, invalidate
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
    RequestContext,
    SimilarItems,
)
from serving.service import (
    Callers,
    FeatureLookup,
    Ranker,
    Recommender,
    Reranker,
    Retriever,
    Unavailable,
    in_process_callers,
    limit_math_threads,
    run_with_timeout,
)

log = logging.getLogger("recstack.serving")
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc"}
KNOWN_PATHS = OPEN_PATHS | {"/recommend", "/feedback", "/feedback/batch"}
TOO_BIG = f"request body larger than {MAX_BODY_BYTES} bytes"
STORE_DOWN = (
    "The event store is unavailable (restarting, unreachable, disk full): the failing event and those after it were "
    "not stored; resend with the same event ids (Retry-After: 1)"
)


class AppConfig(BaseModel):
    """The Serve application's arguments (``args`` in serve_config.yaml)."""

    model_config = {"extra": "forbid"}

    mode: str = Field(default="", description="graph | fused; empty = RECSTACK_SERVE_MODE.")
    deadline_ms: float | None = Field(default=None, gt=0, le=10_000)
    experiments: list[Experiment] = Field(default_factory=list)
    rerank: RerankParams = Field(default_factory=RerankParams)


# -- the backend the HTTP layer talks to ------------------------------------------------------------------------
class Backend:
    """Recommendation, similarity, feedback and readiness over stage callers (in-process or Serve handles)."""

    def __init__(
        self, settings: Settings, config: AppConfig, callers: Callers, retriever: Any, ranker: Any, lookup: Any
    ) -> None:
        self.settings = settings
        deadline = (config.deadline_ms or settings.stage_deadline_ms) / 1000
        cache = ResultCache(settings) if settings.result_cache_ttl_s > 0 else None
        self.recommender = Recommender(callers, deadline, config.experiments, config.rerank, cache)
        self.retriever, self.ranker, self.lookup = retriever, ranker, lookup
        self._feedback: Any = None
        self.impressions = ImpressionLog(self.feedback_sink)

    async def similar(self, item_id: str, k: int) -> list[dict[str, Any]] | None:
        call = self.retriever.similar
        if hasattr(call, "remote"):
            return await call.remote(item_id, k)
        return await asyncio.to_thread(call, item_id, k)

    async def ready(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}

        for name, check in (("postgres", stack.check_postgres), ("redis", stack.check_redis)):
            try:
                await asyncio.to_thread(check, self.settings)
                checks[name] = "ok"
            except Exception as err:
                checks[name] = f"unreachable: {err}"
        try:
            call = self.ranker.ready
            ok = await (call.remote() if hasattr(call, "remote") else asyncio.to_thread(call))
            checks["model"] = "loaded" if ok else "no promoted model"
        except Exception as err:
            checks["model"] = f"error: {err}"
        for name, stage in (("retriever", self.retriever), ("feature_lookup", self.lookup)):
            try:  # in graph mode: the stage's replica is up and has finished warming
                call = stage.ready
                ok = await (call.remote() if hasattr(call, "remote") else asyncio.to_thread(call))
                checks[name] = "ok" if ok else "starting"
            except Exception as err:
                checks[name] = f"error: {err}"
        return checks

    def feedback_sink(self) -> Any:
        if self._feedback is None:
            self._feedback = FeedbackSink(self.settings)
        return self._feedback


class ImpressionLog:
    """Every slate served, written in batches: one transaction every ``flush_s`` instead of a statement per response
    (Postgres and the replica spend their CPU on recommendations). Impressions are an analytics log: a replica that
    dies loses at most its last ``flush_s`` of them, and while Postgres is down at most ``max_pending`` wait."""

    def __init__(self, sink: Any, flush_s: float = 0.1, max_pending: int = 10_000) -> None:
        self.sink, self.flush_s, self.max_pending = sink, flush_s, max_pending
        self.pending: list[tuple[Any, ...]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, response: RecommendResponse, context: RequestContext | None = None) -> None:
        """Queue one slate with the request context it was ranked for (training joins it onto the feedback that
        answers the slate: training/interactions.py)."""
        if len(self.pending) >= self.max_pending:
            metrics.FALLBACKS.labels("impression_log_failed").inc()
            return
        self.pending.append(
            (
                response.request_id,
                response.user_id,
                response.experiment.name if response.experiment else None,
                response.experiment.variant if response.experiment else None,
                response.model_version,
                [i.item_id for i in response.items],
                response.degraded,
                json.dumps(context.model_dump(mode="json", exclude_none=True) if context else {}),
            )
        )
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            if not self.pending:
                continue
            batch, self.pending = self.pending, []
            try:
                await asyncio.to_thread(self.sink().log_impressions, batch)
            except Exception as err:  # kept for the next flush (up to max_pending)
                log.warning("impressions not logged yet (%s)", err)
                self.pending = (batch + self.pending)[: self.max_pending]


class FeedbackSink:
    """Durable feedback (Postgres first), then the real-time state through Feast's push; impressions log."""

    def __init__(self, settings: Settings) -> None:
        from recstack.features.store import open_store
        from serving.service import _pool

        self.settings = settings
        # A 2xx means the event is on disk: commits wait for the WAL flush even on a server configured otherwise.
        self.pool = _pool(settings, options="-c synchronous_commit=on")
        # Impressions are an analytics log: no WAL flush wait per response (a crash may lose the last few
        # hundred milliseconds of them, never a feedback event, which goes through ``pool``).
        self.impressions = _pool(settings, size=2, options="-c synchronous_commit=off")
        self.store = open_store(settings)
        self.redis = stack.redis_client(settings)

    def record(self, event: FeedbackEvent) -> FeedbackResult:
        from recstack.features.realtime import Feedback, push_state, store_event

        context = {"request_id": event.request_id} if event.request_id else {}
        feedback = Feedback(
            event.event_id, event.user_id, event.item_id, event.type, event.value, event.occurred_at, context
        )
        with self.pool.connection() as conn:
            conn.autocommit = False
            try:
                result = store_event(conn, feedback)
                conn.commit()
            finally:
                conn.autocommit = True
        state = result.state
        if result.created and state is not None:
            try:  # the event is durable already; a Redis outage only delays the real-time state
                run_with_timeout(lambda: push_state(self.store, state), self.settings.connect_timeout_s)
            except Exception:
                metrics.FALLBACKS.labels("feedback_push_failed").inc()
        if result.created and result.history is not None:
            self.merge_history(event.user_id, result.history)
        if result.created and self.settings.result_cache_ttl_s > 0:
            self.drop_cached_slates(event.user_id)
        status: Literal["created", "duplicate"] = "created" if result.created else "duplicate"
        metrics.FEEDBACK.labels(status).inc()
        return FeedbackResult(event_id=event.event_id, status=status)

    def merge_history(self, user_id: str, event: UserHistory) -> None:
        """The stored event into the user's retrieval history; if Redis fails, its key is dropped (best effort) so
        the next read aggregates Postgres, which has the event, instead of serving the item as unseen."""
        from recstack.tables import history

        try:
            run_with_timeout(lambda: history.merge(self.redis, user_id, event), self.settings.connect_timeout_s)
        except Exception:
            metrics.FALLBACKS.labels("feedback_history_failed").inc()
            try:
                self.redis.delete(history.key(user_id))
            except Exception as err:
                log.warning("history of %s may be stale until its next event or materialize (%s)", user_id, err)

    def drop_cached_slates(self, user_id: str) -> None:
        """After the event reached the real-time state and the history: the user's cached slates are misses from now
        on (serving/result_cache.py). If Redis fails here, they may be served until they expire (the cache's TTL)."""
        try:
            run_with_timeout(lambda: invalidate(self.redis, user_id), self.settings.connect_timeout_s)
        except Exception as err:
            metrics.FALLBACKS.labels("result_cache_invalidate_failed").inc()
            log.warning(
                "cached slates of %s may be served for up to %d s more (%s)",
                user_id,
                self.settings.result_cache_ttl_s,
                err,
            )

    def log_impressions(self, rows: list[tuple[Any, ...]]) -> None:
        """(request_id, user_id, experiment, variant, model_version, item_ids, degraded, context as JSON) rows in one
        transaction."""
        with self.impressions.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO impressions "
                "(request_id, user_id, experiment, variant, model_version, item_ids, degraded, context) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (request_id) DO NOTHING",
                rows,
            )


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

    def __init__(self, app: Any, api_key: str | None = None) -> None:
        self.app, self.api_key = app, (api_key.encode() if api_key else None)

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

        try:
            refused, receive = await self._checked(scope, receive)
            await (refused or self.app)(scope, receive, send_counted)
        except Exception:  # never a bare 500 page: a JSON error without internals
            log.exception("unhandled error on %s", path)
            if not status["sent"]:
                await _error(500, "internal error; the request was not processed")(scope, receive, send_counted)
        finally:
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

    api.add_middleware(Guard, api_key=settings.api_key)

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


def store_outages() -> tuple[type[Exception], ...]:
    """Errors of a store that is restarting, unreachable, out of disk or out of connections, rather than of the
    request or the code: psycopg's OperationalError (connection lost, admin shutdown, class 53 "insufficient
    resources" such as disk full, the pool's timeout) and SQLAlchemy's wrapper of it (Feast's registry, read when the
    feedback sink opens)."""
    import psycopg
    import sqlalchemy.exc

    return (psycopg.OperationalError, sqlalchemy.exc.OperationalError)


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


# -- Ray Serve --------------------------------------------------------------------------------------------------
# Serve's per-request access log line costs CPU on every hop; /metrics counts requests per endpoint and status.
# Turn it back on per deployment in the Serve config (logging_config.enable_access_log) when tracing by hand.
LOGGING: dict[str, Any] = {"enable_access_log": False}
# What each replica reserves, the one home of deployment sizes. A replica's num_cpus follows the CPU it burns per
# request, so that Ray's placement (and KubeRay's autoscaler, which adds a node when replicas cannot be placed)
# follows the real load. Measured through POST /recommend on the graph app (`python -m bench.bench_autoscale`,
# bench/reference/autoscale-20000u-5000i-500000e.json): CPU ms per request Ingress 25.1, Retriever 16.8, Reranker 7.3,
# FeatureLookup 3.7, Ranker 3.6 (the ingress parses and validates the HTTP request and serialises four handle calls;
# CatBoost over ~300 candidates is cheap). The two heavy ones get half a CPU, the rest a quarter. At the minimum (one
# replica each) the graph needs 1.75 CPUs, so it fits a 2-core laptop; at the maximum 1.5 + 4 x 1.25 = 6.5, two of
# rayservice.yaml's 4-CPU worker pods: load past one pod's worth asks for another node.
DEPLOYMENT_SIZES: dict[str, float] = {
    "Ingress": 0.5,
    "Retriever": 0.5,
    "FeatureLookup": 0.25,
    "Ranker": 0.25,
    "Reranker": 0.25,
}
# Scale up within seconds of a rise, down after a minute of less load (Serve's default waits 10 minutes).
SCALING_DELAYS: dict[str, float] = {"upscale_delay_s": 10, "downscale_delay_s": 60}
# Stages: a stage replica runs one request at a time under its GIL (a few to 16 ms of CPU each), so more than one in
# flight means requests wait for it.
AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 1,
    **SCALING_DELAYS,
}
# The ingress holds each request for the whole pipeline (~55 ms at light load): 2 in flight is ~36 requests/s, about
# where its ~25 ms of CPU per request fills a core.
INGRESS_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 2,
    **SCALING_DELAYS,
}
# Past this many requests waiting at the proxy for an ingress replica, the proxy answers 503 at once (load shed)
# instead of letting every request wait until clients time out.
INGRESS_MAX_QUEUED = 32


def stage_options(name: str) -> dict[str, Any]:
    """Deployment options of one pipeline stage."""
    return {
        "name": name,
        "ray_actor_options": {"num_cpus": DEPLOYMENT_SIZES[name]},
        "max_ongoing_requests": 16,
        "logging_config": LOGGING,
        "autoscaling_config": AUTOSCALING,
    }


# Fused: the whole pipeline is one replica's work (~20 ms of CPU per request here, mostly under the GIL), so one
# replica saturates below 50 requests/s on its own; two use both cores (bench/bench_serving.py: @50 rps p50 689 ms
# with one replica, 37 ms with two).
FUSED_SIZE = 0.5  # what one fused replica reserves
FUSED_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 2,
    "max_replicas": 4,
    "target_ongoing_requests": 8,
    **SCALING_DELAYS,
}


def replica_setup(role: str) -> None:
    """First thing in every deployment's constructor: math libraries on one thread, loopback-only on a laptop, and
    this replica's metrics published for every replica's /metrics (serving/metrics.py)."""
    limit_math_threads()
    ray_runtime.bind_replica_servers_to_loopback()
    metrics.start_publishing(role, lambda: stack.redis_client(get_settings()))


@serve.deployment(**stage_options("Retriever"))
class RetrieverDeployment:
    def __init__(self) -> None:
        replica_setup("Retriever")
        self.stage = Retriever(get_settings())

    def retrieve(self, *args: Any) -> Any:
        return self.stage.retrieve(*args)

    def popular(self, *args: Any) -> Any:
        return self.stage.popular(*args)

    def similar(self, *args: Any) -> Any:
        return self.stage.similar(*args)

    def ready(self) -> bool:
        return self.stage.ready()


@serve.deployment(**stage_options("FeatureLookup"))
class LookupDeployment:
    def __init__(self) -> None:
        replica_setup("FeatureLookup")
        self.stage = FeatureLookup(get_settings())

    def lookup(self, *args: Any) -> Any:
        return self.stage.lookup(*args)

    def ready(self) -> bool:
        return True  # the constructor warmed the item cache


@serve.deployment(**stage_options("Ranker"))
class RankerDeployment:
    def __init__(self) -> None:
        replica_setup("Ranker")
        self.stage = Ranker(get_settings())

    def rank(self, *args: Any) -> Any:
        return self.stage.rank(*args)

    def explain(self, *args: Any) -> Any:
        return self.stage.explain(*args)

    def promoted_version(self) -> str | None:
        return self.stage.promoted()

    def ready(self) -> bool:
        return self.stage.ready()


@serve.deployment(**stage_options("Reranker"))
class RerankerDeployment:
    def __init__(self) -> None:
        replica_setup("Reranker")
        self.stage = Reranker()

    def rerank(self, *args: Any) -> Any:
        return self.stage.rerank(*args)


def _handle_callers(retriever: Any, lookup: Any, ranker: Any, reranker: Any) -> Callers:
    def via(method: Any) -> Any:
        async def call(*args: Any) -> Any:
            return await method.remote(*args)

        return call

    return Callers(
        via(retriever.retrieve),
        via(retriever.popular),
        via(lookup.lookup),
        via(ranker.rank),
        via(reranker.rerank),
        via(ranker.explain),
        via(ranker.promoted_version),
    )


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": DEPLOYMENT_SIZES["Ingress"]},
    logging_config=LOGGING,
    max_ongoing_requests=64,
    max_queued_requests=INGRESS_MAX_QUEUED,
    autoscaling_config=INGRESS_AUTOSCALING,
)
@serve.ingress()
class Ingress:
    """HTTP ingress. With stage handles (graph mode) it calls them; without, it runs the stages in-process."""

    def __init__(self, config: dict[str, Any], *handles: Any) -> None:
        replica_setup("Ingress")
        settings = get_settings()
        app_config = AppConfig.model_validate(config)
        if handles:
            retriever, lookup, ranker, reranker = handles
            callers = _handle_callers(retriever, lookup, ranker, reranker)
            backend = Backend(settings, app_config, callers, retriever, ranker, lookup)
        else:
            backend = local_backend(settings, app_config)
        self.api = create_api(backend, settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.api


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder (``serve build|run serving.app:build_app``); ``args`` are AppConfig's fields."""
    try:
        config = AppConfig.model_validate(args or {})
    except ValidationError as err:
        raise ValueError(f"invalid serve application args: {json.dumps(err.errors(), default=str)}") from err
    mode = config.mode or get_settings().serve_mode
    payload = config.model_dump(mode="json")
    # serve.deployment turns each class into a Deployment; its type hints do not say so.
    ingress, stages = cast(Any, Ingress), cast(Any, (RetrieverDeployment, LookupDeployment, RankerDeployment))
    if mode == "graph":
        retriever, lookup, ranker = stages
        return ingress.bind(
            payload, retriever.bind(), lookup.bind(), ranker.bind(), cast(Any, RerankerDeployment).bind()
        )
    if mode != "fused":
        raise ValueError(f"mode must be 'graph' or 'fused', got {mode!r}")
    return ingress.options(autoscaling_config=FUSED_AUTOSCALING, ray_actor_options={"num_cpus": FUSED_SIZE}).bind(
        payload
    )


def local_backend(settings: Settings | None = None, config: AppConfig | None = None) -> Backend:
    """Every stage in this process, as a fused replica runs them (also tests, benchmarks and probes)."""
    limit_math_threads()
    settings = settings or get_settings()
    retriever, ranker, lookup = Retriever(settings), Ranker(settings), FeatureLookup(settings)
    callers = in_process_callers(retriever, lookup, ranker, Reranker())
    return Backend(settings, config or AppConfig(), callers, retriever, ranker, lookup)


def create_local_api(settings: Settings | None = None, config: AppConfig | None = None) -> FastAPI:
    """The same API without Ray (one process): tests and the benchmark's in-process floor."""
    backend = local_backend(settings, config)
    return create_api(backend, backend.settings)


# Serve applications for `serve build` / `serve run` (binding is declarative: no I/O, no settings read):
#   serve build serving.app:graph_app -o serving/serve_config.yaml
#   serve run serving/serve_config.yaml        or        serve run serving.app:build_app mode=fused
graph_app = build_app({"mode": "graph"})
