"""How the orchestration reaches each stage: ``Callers``, one typed async callable per stage method.

Two ways to build them, one per serve mode. In-process (fused mode, tests, benchmarks) a caller runs the stage
method of a runtime (serving/runtimes.py) on that stage's own threads; in graph mode it is a Ray Serve handle call
to the stage's deployment (serving/app.py). The orchestrator (serving/orchestrate.py) sees the same types either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np

from recstack.stages.rank import RankContext
from recstack.stages.rerank import RerankParams
from recstack.stages.retrieve import CandidateSet, Filters
from serving import metrics
from serving.runtimes import FeatureLookup, Features, Ranker, Reranker, Retriever, Scores

P = ParamSpec("P")
R = TypeVar("R")
Ready = Callable[[], Awaitable[bool]]


@dataclass
class Callers:
    """The stage methods as the orchestrator calls them; the runtimes' methods of the same names say what each does."""

    retrieve: Callable[[str, Filters, list[str], str | None], Awaitable[CandidateSet]]  # ..., exclude, model version
    popular: Callable[[Filters, list[str]], Awaitable[CandidateSet]]  # filters, exclude
    lookup: Callable[[str, list[str]], Awaitable[Features]]  # user_id, candidate item ids
    rank: Callable[[Features, CandidateSet, RankContext, str | None], Awaitable[Scores]]  # ..., model version
    rerank: Callable[[CandidateSet, np.ndarray, int, RerankParams], Awaitable[list[int]]]  # ..., scores, k, params
    explain: Callable[[Features, CandidateSet, RankContext, str, list[int]], Awaitable[list[list[str]]]]
    promoted: Callable[[], Awaitable[str | None]] | None = None  # the result cache's model key; None: not asked
    # (source, version) when a model version (None: the promoted one) orders by one source's score; None: not asked
    order: Callable[[str | None], Awaitable[tuple[str, str] | None]] | None = None
    similar: Callable[[str, int], Awaitable[list[dict[str, Any]] | None]] | None = None  # item_id, k
    # /readyz's stage checks by name: "model" (the Ranker has a promoted model), "retriever", "feature_lookup".
    ready: dict[str, Ready] = field(default_factory=dict)


# In-process stages run on threads (the stage code blocks: psycopg, redis-py, numpy, CatBoost). Each stage has its
# own few threads, so work that outlives its deadline (a hung store: its calls end at the clients' socket and
# statement timeouts, RECSTACK_CONNECT_TIMEOUT_S, seconds after the stage deadline) holds only that stage's threads,
# never the other stages' or the popular fallback's. A call still queued when its caller gives up is cancelled before
# it starts; once every thread of a stage runs abandoned work, a new call is refused at once (StageBusy: the request
# is answered degraded now) instead of waiting seconds in the queue behind it.
STAGE_THREADS = 4


class StageBusy(RuntimeError):
    """Every thread of an in-process stage is still running work whose caller gave up at its deadline."""


class StagePool:
    """One stage's threads, with the count of calls still running after their caller stopped waiting."""

    def __init__(self, name: str, threads: int = STAGE_THREADS) -> None:
        self.name, self.threads = name, threads
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"stage-{name}")
        self.abandoned = 0
        self._lock = threading.Lock()

    def _released(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self.abandoned -= 1

    def caller(self, fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
        """``fn`` as an async callable running on this stage's threads."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._lock:
                if self.abandoned >= self.threads:
                    metrics.FALLBACKS.labels(f"{self.name}_busy").inc()
                    raise StageBusy(f"{self.name}: every thread still runs work past its deadline")
            future = self.executor.submit(fn, *args, **kwargs)
            try:
                return await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                if not future.cancel():  # already running: it ends on its own, holding its thread until then
                    with self._lock:
                        self.abandoned += 1
                    future.add_done_callback(self._released)
                raise

        return call


def _in_a_thread(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``fn`` on asyncio's default threads (lookups outside a request's deadline: similar items, readiness)."""

    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    return call


def in_process_callers(retriever: Retriever, lookup: FeatureLookup, ranker: Ranker, reranker: Reranker) -> Callers:
    """Callers running the runtimes in this process (fused replicas, tests, benchmarks)."""
    return Callers(
        retrieve=StagePool("retrieve").caller(retriever.retrieve),
        popular=StagePool("popular").caller(retriever.popular),
        lookup=StagePool("lookup").caller(lookup.lookup),
        rank=StagePool("rank").caller(ranker.rank),
        rerank=StagePool("rerank").caller(reranker.rerank),
        explain=StagePool("explain").caller(ranker.explain),
        promoted=StagePool("promoted").caller(ranker.promoted),
        order=_in_a_thread(ranker.order),
        similar=_in_a_thread(retriever.similar),
        ready={
            "model": _in_a_thread(ranker.ready),
            "retriever": _in_a_thread(retriever.ready),
            "feature_lookup": _in_a_thread(lookup.ready),
        },
    )


def _remote(method: Any) -> Callable[..., Awaitable[Any]]:
    """A Serve handle's method as an async callable (the deployment runs the runtime's method of the same name)."""

    async def call(*args: Any) -> Any:
        response = method.remote(*args)
        try:
            return await response
        except asyncio.CancelledError:  # past the caller's deadline: not left queued at the handle, or running
            response.cancel()
            raise

    return call


# Graph-mode stage calls go by value over Serve's inter-deployment gRPC (``_by_reference=False``), not as Ray actor
# tasks. Serve picks the transport when a handle is bound, from RAY_SERVE_THROUGHPUT_OPTIMIZED as the binding process
# saw it at import; `recstack serve`, `serve run` and the benchmarks bind before that variable reaches the Ray
# processes, so without this every hop took the actor-task path: p50 5.61 ms against 3.89 ms by value for one hop
# returning 120 candidates (`python -m bench.probe_hop`); through /recommend on ml-latest-small at 25 requests/s the
# Retriever replica's CPU a request fell from 10.2 to 7.0 ms and the ingress's from 8.7 to 5.4 (`bench.probe_graph`).
# By value cannot pass a DeploymentResponse on to another call; no stage call does (the orchestration awaits each
# stage's answer and decides the next step itself).
BY_VALUE: dict[str, Any] = {"_by_reference": False}


def _one_at_a_time(check: Ready) -> Ready:
    """A stage deployment's readiness with at most one call in flight: a probe that gives up on it (its deadline)
    leaves it running for the next probe instead of each probe queueing another. A handle call to a deployment with
    no replica yet waits in the handle's queue, and Serve's autoscaler counts queued requests as load: checked once a
    second while it took 20 s to start, a stage with no traffic was upscaled 1 -> 4 replicas ("current ongoing
    requests: 13.47"), 1 -> 2 when each check gave up after 2 s, and not at all one at a time
    (`python -m bench.probe_queued_checks`, bench/reference/probe-queued-checks.json)."""
    pending: asyncio.Future[bool] | None = None  # the call in flight, or its answer no probe has read yet

    async def call() -> bool:
        nonlocal pending
        if pending is None:
            pending = asyncio.ensure_future(check())
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())  # read even if no one waits
        current = pending
        try:
            return await asyncio.shield(current)
        finally:
            if current.done() and pending is current:  # answered (this probe reads it): the next probe asks afresh
                pending = None

    return call


def handle_callers(retriever: Any, lookup: Any, ranker: Any, reranker: Reranker) -> Callers:
    """Callers over the stage deployments' Serve handles (graph mode); the rerank runs in this process."""
    retriever, lookup, ranker = (handle.options(**BY_VALUE) for handle in (retriever, lookup, ranker))
    return Callers(
        retrieve=_remote(retriever.retrieve),
        popular=_remote(retriever.popular),
        lookup=_remote(lookup.lookup),
        rank=_remote(ranker.rank),
        rerank=StagePool("rerank").caller(reranker.rerank),
        explain=_remote(ranker.explain),
        promoted=_remote(ranker.promoted),
        order=_remote(ranker.order),
        similar=_remote(retriever.similar),
        ready={
            "model": _one_at_a_time(_remote(ranker.ready)),
            "retriever": _one_at_a_time(_remote(retriever.ready)),
            "feature_lookup": _one_at_a_time(_remote(lookup.ready)),
        },
    )
