"""Feedback and impressions: the writes of the request path.

``FeedbackSink`` stores a feedback event durably in Postgres (idempotent by event_id), then updates the user's
real-time state (Feast push), retrieval history and cached slates in Redis, each best effort once the event is on
disk. ``ImpressionLog`` writes every slate served, in batches. ``store_outages`` names the errors that mean "the store
is down, retry" rather than "this request or the code is wrong" (the HTTP layer answers them 503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from recstack import stack
from recstack.settings import Settings
from recstack.stages.item_item import UserHistory
from serving import metrics
from serving.result_cache import invalidate
from serving.runtimes import postgres_pool
from serving.schemas import FeedbackEvent, FeedbackResult, RecommendResponse, RequestContext

log = logging.getLogger("recstack.serving")


class Impression(NamedTuple):
    """One row of ``impressions``: a slate served and what it was served for."""

    request_id: str
    user_id: str
    experiment: str | None
    variant: str | None
    model_version: str | None
    item_ids: list[str]
    degraded: bool
    context: str  # the request context as JSON (training joins it onto the feedback that answers the slate)


class ImpressionLog:
    """Every slate served, written in batches: one transaction every ``flush_s`` instead of a statement per response
    (Postgres and the replica spend their CPU on recommendations). Impressions are an analytics log: a replica that
    dies loses at most its last ``flush_s`` of them, and while Postgres is down at most ``max_pending`` wait."""

    def __init__(self, sink: Callable[[], FeedbackSink], flush_s: float = 0.1, max_pending: int = 10_000) -> None:
        self.sink, self.flush_s, self.max_pending = sink, flush_s, max_pending
        self.pending: list[Impression] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, response: RecommendResponse, context: RequestContext | None = None) -> None:
        """Queue one slate with the request context it was ranked for (training joins it onto the feedback that
        answers the slate: training/interactions.py)."""
        if len(self.pending) >= self.max_pending:
            metrics.FALLBACKS.labels("impression_log_failed").inc()
            return
        self.pending.append(
            Impression(
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

        self.settings = settings
        # A 2xx means the event is on disk: commits wait for the WAL flush even on a server configured otherwise.
        self.pool = postgres_pool(settings, options="-c synchronous_commit=on")
        # Impressions are an analytics log: no WAL flush wait per response (a crash may lose the last few
        # hundred milliseconds of them, never a feedback event, which goes through ``pool``).
        self.impressions = postgres_pool(settings, size=2, options="-c synchronous_commit=off")
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

    def log_impressions(self, rows: list[Impression]) -> None:
        """``rows`` in one transaction (a request id already logged is skipped)."""
        with self.impressions.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO impressions "
                "(request_id, user_id, experiment, variant, model_version, item_ids, degraded, context) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (request_id) DO NOTHING",
                rows,
            )


def store_outages() -> tuple[type[Exception], ...]:
    """Errors of a store that is restarting, unreachable, out of disk or out of connections, rather than of the
    request or the code: psycopg's OperationalError (connection lost, admin shutdown, class 53 "insufficient
    resources" such as disk full, the pool's timeout) and SQLAlchemy's wrapper of it (Feast's registry, read when the
    feedback sink opens)."""
    import psycopg
    import sqlalchemy.exc

    return (psycopg.OperationalError, sqlalchemy.exc.OperationalError)


def run_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run ``fn`` in a helper thread and stop waiting after ``timeout_s`` (the thread finishes on its own)."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(fn).result(timeout=timeout_s)
    finally:
        executor.shutdown(wait=False)
