"""The serving stages as plain classes (one per Ray Serve deployment), and the orchestration with deadlines.

``Retriever``, ``FeatureLookup``, ``Ranker`` and ``Reranker`` hold their clients and call the pure stage functions
in recstack/stages. ``Recommender`` chains them through *callers*: in-process (fused mode, tests, the benchmark's
floor) a caller runs the stage method in a worker thread; in graph mode it is a Ray Serve handle call. Either way
each stage has a deadline, and a failing or late stage degrades the answer instead of failing it:
  * retrieval fails -> popular items (cached), degraded;
  * feature lookup or ranking fails -> retrieval order, degraded.
Before any stage, the result cache (serving/result_cache.py) may answer with the slate the same request shape got a
few seconds ago; in both serve modes that lookup is here, in the orchestration, and nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from recstack import stack
from recstack.settings import Settings
from recstack.stages.item_item import UserHistory
from recstack.stages.rank import RankContext, contributions, model_columns, score
from recstack.stages.rerank import Candidates, RerankParams, head_floor, rerank
from recstack.stages.retrieve import (
    CANDIDATE_FEATURES,
    CandidateSet,
    Filters,
    ItemItemIndex,
    RetrievalParams,
    configure_connection,
    place_cold,
    retrieve,
    source_order,
)
from recstack.tables import history, registry
from serving import metrics
from serving.experiments import Experiment, assign
from serving.result_cache import ResultCache, shape_of
from serving.schemas import (
    ExperimentAssignment,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RerankOverrides,
)

log = logging.getLogger("recstack.serving")
RERANK_POOL = 100  # the ranker's top-N handed to the rerank stage
POPULAR_REFRESH_S = 60
MODEL_CHECK_S = 5


def _pool(settings: Settings, size: int = 4, options: str = ""):  # type: ignore[no-untyped-def]
    from psycopg_pool import ConnectionPool

    timeout = settings.connect_timeout_s
    return ConnectionPool(
        stack.postgres_dsn(settings),
        min_size=1,
        max_size=size,
        timeout=timeout,
        kwargs={
            "autocommit": True,
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)} {options}".strip(),
        },
        configure=configure_connection,
        open=True,
    )


def _online_lookup(settings: Settings, users: dict[str, Any], items: dict[str, Any]):  # type: ignore[no-untyped-def]
    from recstack.features.online import OnlineLookup
    from recstack.features.store import open_store

    client = stack.redis_client(settings)
    return OnlineLookup.from_store(open_store(settings), client, users, items)


class Retriever:
    """Recent items (Redis, else the durable Postgres copy) -> user state -> one pgvector statement."""

    def __init__(self, settings: Settings, params: RetrievalParams | None = None) -> None:
        self.settings = settings
        self.params = params or RetrievalParams()
        self.pool = _pool(settings)
        self.realtime = _online_lookup(settings, {"user_realtime": ["recent_item_ids"]}, {})
        self.redis = stack.redis_client(settings)
        self._item_item: ItemItemIndex | None = None
        self._item_item_checked = 0.0
        self._item_item_lock = threading.Lock()
        self._head_floor = 0.0  # the catalog's long-tail floor, read with each new trained set
        try:
            self.item_item()
        except Exception as err:
            log.warning("item-item neighbours not loaded yet (%s)", err)

    def item_item(self) -> ItemItemIndex | None:
        """The stored item-item neighbours, reloaded when training writes a new set (checked every few seconds);
        the long-tail floor (rerank.head_floor over the trained popularity) is re-read with them."""
        if time.monotonic() - self._item_item_checked < MODEL_CHECK_S:
            return self._item_item
        with self._item_item_lock:
            if time.monotonic() - self._item_item_checked < MODEL_CHECK_S:
                return self._item_item
            from recstack.tables import neighbours

            with self.pool.connection() as conn:
                stored = neighbours.version(conn)
                if stored is None:
                    self._item_item = None
                elif self._item_item is None or self._item_item.version != stored:
                    rows = conn.execute("SELECT item_id, popularity FROM item_vectors ORDER BY item_id").fetchall()
                    ids = np.array([r[0] for r in rows], np.int64)
                    self._item_item = ItemItemIndex(ids, neighbours.load(conn, ids), stored)
                    self._head_floor = head_floor(np.array([r[1] or 0.0 for r in rows], np.float64))
            self._item_item_checked = time.monotonic()
        return self._item_item

    def recent_items(self, user_id: str) -> list[str]:
        try:
            found = self.realtime.lookup(user_id, []).user.get("user_realtime__recent_item_ids")
            return list(found or [])
        except Exception:  # Redis down or slow: the same list from Postgres
            metrics.FALLBACKS.labels("recent_items_from_postgres").inc()
            with self.pool.connection() as conn:
                row = conn.execute(
                    "SELECT recent_item_ids FROM user_realtime WHERE user_id = %s", (user_id,)
                ).fetchone()
            return list(row[0] or []) if row else []

    def retrieve(self, user_id: str, filters: Filters, exclude: list[str], exclude_seen: bool = True) -> CandidateSet:
        recent = self.recent_items(user_id)[: self.params.recent]
        try:
            item_item = self.item_item()
        except Exception as err:  # Postgres unreachable: retrieval below fails and degrades the same way
            log.warning("item-item neighbours not checked (%s)", err)
            item_item = self._item_item
        floor = self._head_floor
        stored = self.stored_history(user_id)
        with self.pool.connection() as conn:
            found = stored if stored is not None else history.from_postgres(conn, user_id)
            out = retrieve(conn, user_id, recent, filters, exclude, self.params, exclude_seen, item_item, floor, found)
        if stored is None:
            try:  # the next request reads it from Redis
                history.fill(self.redis, user_id, found)
            except Exception as err:
                log.debug("history of %s not cached (%s)", user_id, err)
        return out

    def stored_history(self, user_id: str) -> UserHistory | None:
        """The user's history from Redis (None: not there or Redis unreachable; Postgres aggregates it then)."""
        try:
            found = history.read(self.redis, user_id)
        except Exception:
            metrics.FALLBACKS.labels("history_from_postgres").inc()
            return None
        if found is None:
            metrics.FALLBACKS.labels("history_not_stored").inc()
        return found

    def ready(self) -> bool:
        with self.pool.connection() as conn:
            return conn.execute("SELECT count(*) > 0 FROM item_vectors").fetchone() == (True,)

    def popular(self, filters: Filters, exclude: list[str], n: int = 500) -> CandidateSet:
        """Popular items only (the retrieval fallback); same statement with the vector sources switched off."""
        params = RetrievalParams(item_item=0, cf=0, content=0, popular=n, recent=0)
        with self.pool.connection() as conn:
            return retrieve(conn, "", [], filters, exclude, params, False, None, self._head_floor)

    def similar(self, item_id: str, k: int) -> list[dict[str, Any]] | None:
        """Items nearest to ``item_id`` by collaborative vector and by content vector (HNSW), merged."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT cf, content FROM item_vectors WHERE external_id = %s", (item_id,)).fetchone()
            if row is None:
                return None
            out: dict[str, dict[str, Any]] = {}
            for kind, vector, op in (("collaborative", row[0], "<#>"), ("content", row[1], "<=>")):
                if vector is None:
                    continue
                column = "cf" if kind == "collaborative" else "content"
                sim = f"-(v.{column} {op} %(q)s)" if op == "<#>" else f"1 - (v.{column} {op} %(q)s)"
                rows = conn.execute(
                    f"SELECT v.external_id, i.title, v.domain, {sim} FROM item_vectors v "  # noqa: S608
                    f"JOIN items i ON i.item_id = v.item_id WHERE v.{column} IS NOT NULL "
                    f"AND v.external_id <> %(id)s ORDER BY v.{column} {op} %(q)s LIMIT %(k)s",
                    {"q": vector, "id": item_id, "k": k},
                ).fetchall()
                for ext, title, domain, similarity in rows:
                    entry = out.setdefault(ext, {"item_id": ext, "title": title, "domain": domain, "score": 0.0})
                    entry["score"] = max(entry["score"], float(similarity))
                    entry.setdefault("reasons", []).append(f"{kind} similarity {float(similarity):.3f}")
        return sorted(out.values(), key=lambda e: -e["score"])[:k]


class FeatureLookup:
    """The fast online lookup (Feast's Redis hashes; item columns cached per materialization version)."""

    def __init__(self, settings: Settings) -> None:
        from recstack.features.online import OnlineLookup
        from recstack.features.store import open_store
        from recstack.features.training_frames import FEATURE_SERVICE

        self.lookup_ = OnlineLookup.for_service(open_store(settings), stack.redis_client(settings), FEATURE_SERVICE)
        try:  # warm the item cache with the whole catalog so the first requests pay nothing
            with _pool(settings, size=1) as pool, pool.connection() as conn:
                ids = [r[0] for r in conn.execute("SELECT external_id FROM items ORDER BY item_id")]
            self.lookup_.load_items(ids)
        except Exception as err:
            log.warning("item feature cache not warmed (%s); it fills on demand", err)

    def ready(self) -> bool:
        return True

    def lookup(self, user_id: str, item_ids: list[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        found = self.lookup_.lookup(user_id, item_ids)
        return found.user, found.items


class Ranker:
    """The promoted CatBoost model (checksum verified); a promote or rollback is picked up within seconds."""

    def __init__(self, settings: Settings) -> None:
        self.pool = _pool(settings, size=2)
        self._models: dict[str, tuple[Any, list[str], list[str], str | None]] = {}
        self._promoted: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        try:
            self.model(None)  # load (and verify) the promoted model before the first request
        except Exception as err:
            log.warning("no model loaded yet (%s)", err)

    def promoted(self) -> str | None:
        if time.monotonic() - self._checked > MODEL_CHECK_S:
            with self.pool.connection() as conn:
                promoted = registry.promoted_version(conn)
            if promoted is not None and promoted != self._promoted:
                metrics.MODEL_INFO.info({"version": promoted})  # a rollback to a cached model shows too
            self._promoted = promoted
            self._checked = time.monotonic()
        return self._promoted

    def model(self, version: str | None) -> tuple[str, Any, list[str], list[str], str | None] | None:
        version = version or self.promoted()
        if version is None:
            return None
        with self._lock:
            if version not in self._models:
                with self.pool.connection() as conn:
                    record = registry.get(conn, version)
                    loaded = registry.load_verified(conn, record)
                self._models[version] = (
                    loaded,
                    record.features,
                    record.params.get("categorical", []),
                    record.params.get("order_by"),
                )
        model, features, categorical, order_by = self._models[version]
        return version, model, features, categorical, order_by

    def _matrix(
        self,
        user: dict[str, Any],
        items: dict[str, np.ndarray],
        candidates: CandidateSet,
        ctx: RankContext,
        version: str | None,
    ) -> tuple[str, Any, Any, list[str], list[str]]:
        found = self.model(version)
        if found is None:
            raise RuntimeError("no promoted model")
        version, model, features, categorical, _ = found
        return version, model, model_columns(user, items, candidates, ctx, features, categorical), features, categorical

    def rank(
        self,
        user: dict[str, Any],
        items: dict[str, np.ndarray],
        candidates: CandidateSet,
        ctx: RankContext,
        version: str | None = None,
    ) -> tuple[np.ndarray, str]:
        """(score per candidate, model version). A model whose ranker did not beat its best single source on the
        held-out groups (``order_by`` in its record) orders by that source's score instead."""
        found = self.model(version)
        if found is not None and found[4] is not None:
            return source_order(candidates.features, found[4]), found[0]
        version, model, columns, _, categorical = self._matrix(user, items, candidates, ctx, version)
        return place_cold(score(model, columns, categorical), candidates.features), version

    def explain(
        self,
        user: dict[str, Any],
        items: dict[str, np.ndarray],
        candidates: CandidateSet,
        ctx: RankContext,
        version: str,
        rows: list[int],
    ) -> list[list[str]]:
        """Top feature contributions (SHAP) of the model for the given candidate rows (the slate)."""
        _, model, columns, features, categorical = self._matrix(user, items, candidates, ctx, version)
        return contributions(model, columns, features, categorical, rows)

    def ready(self) -> bool:
        return self.model(None) is not None


class Reranker:
    def rerank(
        self, candidates: CandidateSet, scores: np.ndarray, tail: np.ndarray, k: int, params: RerankParams
    ) -> list[int]:
        """Slate positions (indices into ``candidates``) after MMR, provider cap and long-tail floor."""
        top = np.argsort(-scores, kind="stable")[:RERANK_POOL]
        chosen = rerank(
            Candidates(
                item_ids=[candidates.item_ids[i] for i in top],
                scores=scores[top],
                providers=[candidates.providers[i] for i in top],
                long_tail=tail[top],
                vectors=candidates.vectors[top],
                categories=[candidates.categories[i] for i in top],
            ),
            k,
            params,
        )
        return [int(top[i]) for i in chosen]


# -- orchestration ----------------------------------------------------------------------------------------------
Caller = Callable[..., Awaitable[Any]]


class StageTimeout(RuntimeError):
    pass


class Unavailable(RuntimeError):
    """Nothing to answer with: retrieval and its popular fallback both failed (overload, or the stores are down and
    no popular list was cached yet). The HTTP layer answers 503 with Retry-After."""


@dataclass
class Callers:
    """How the orchestrator reaches each stage method (in-process thread, or a Ray Serve handle)."""

    retrieve: Caller
    popular: Caller
    lookup: Caller
    rank: Caller
    rerank: Caller
    explain: Caller
    promoted: Caller | None = None  # the promoted model version (the result cache's key); None: no cache key has it


def limit_math_threads() -> None:
    """One BLAS/OpenMP thread in this process. Requests already run concurrently, and OpenBLAS's worker threads spin
    while idle: with its default thread pool one /recommend cost 23 ms of CPU for 14 ms of wall time, with one
    thread 11 ms (FastAPI app in one process, 280 requests, 100k/20k stack): CPU other requests and replicas need."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


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

    def caller(self, fn: Callable[..., Any]) -> Caller:
        async def call(*args: Any) -> Any:
            with self._lock:
                if self.abandoned >= self.threads:
                    metrics.FALLBACKS.labels(f"{self.name}_busy").inc()
                    raise StageBusy(f"{self.name}: every thread still runs work past its deadline")
            future = self.executor.submit(fn, *args)
            try:
                return await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                if not future.cancel():  # already running: it ends on its own, holding its thread until then
                    with self._lock:
                        self.abandoned += 1
                    future.add_done_callback(self._released)
                raise

        return call


def in_process_callers(retriever: Retriever, lookup: FeatureLookup, ranker: Ranker, reranker: Reranker) -> Callers:
    def threaded(name: str, fn: Callable[..., Any]) -> Caller:
        return StagePool(name).caller(fn)

    return Callers(
        threaded("retrieve", retriever.retrieve),
        threaded("popular", retriever.popular),
        threaded("lookup", lookup.lookup),
        threaded("rank", ranker.rank),
        threaded("rerank", reranker.rerank),
        threaded("explain", ranker.explain),
        threaded("promoted", ranker.promoted),
    )


class Recommender:
    """One /recommend: retrieve -> lookup -> rank -> rerank with per-stage deadlines and degradation."""

    def __init__(
        self,
        callers: Callers,
        deadline_s: float,
        experiments: list[Experiment] | None = None,
        rerank_params: RerankParams | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.callers = callers
        self.deadline_s = deadline_s
        self.experiments = experiments or []
        self.rerank_params = rerank_params or RerankParams()
        self.cache = cache
        self._popular: CandidateSet | None = None
        self._popular_at = 0.0
        self._refresh: asyncio.Task[Any] | None = None
        self._promoted: str | None = None
        self._promoted_at = -float("inf")
        self._promoted_check: asyncio.Task[Any] | None = None

    async def _stage(self, name: str, call: Caller, *args: Any, deadline: float | None = None) -> Any:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call(*args), timeout=deadline or self.deadline_s)
        except TimeoutError as err:
            raise StageTimeout(f"{name} exceeded its deadline") from err
        finally:
            metrics.STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)

    async def popular(self, filters: Filters, exclude: list[str]) -> CandidateSet:
        unfiltered = not (filters.domain or filters.categories or filters.providers)
        fresh = time.monotonic() - self._popular_at < POPULAR_REFRESH_S
        if unfiltered and self._popular is not None and fresh:
            return self._popular
        try:
            found = await self._stage("popular", self.callers.popular, filters, [], deadline=2 * self.deadline_s)
        except Exception:
            if self._popular is None:
                raise
            return _matching(self._popular, filters)  # Postgres down too: the last popular list we had
        if unfiltered:
            self._popular, self._popular_at = found, time.monotonic()
        return found

    def _keep_popular_fresh(self) -> None:
        """Refresh the cached popular list in the background, so a retrieval failure always has one to serve."""
        stale = time.monotonic() - self._popular_at >= POPULAR_REFRESH_S
        if stale and (self._refresh is None or self._refresh.done()):

            async def refresh() -> None:
                try:
                    await self.popular(Filters(), [])
                except Exception as err:
                    log.warning("popular list not refreshed (%s)", err)

            self._refresh = asyncio.get_running_loop().create_task(refresh())

    def _keep_promoted_fresh(self) -> None:
        """Re-read the promoted model version in the background every few seconds (the Ranker re-reads it as often):
        a promote or rollback changes the result cache's keys, so slates of the previous model stop being served."""
        due = time.monotonic() - self._promoted_at >= MODEL_CHECK_S
        if due and self.callers.promoted and (self._promoted_check is None or self._promoted_check.done()):
            self._promoted_at = time.monotonic()
            promoted = self.callers.promoted

            async def check() -> None:
                try:
                    self._promoted = await asyncio.wait_for(promoted(), timeout=2 * self.deadline_s)
                except Exception as err:  # the Ranker's own failures are what degrade answers; retried in 5 s
                    log.debug("promoted model version not re-read (%s)", err)

            self._promoted_check = asyncio.get_running_loop().create_task(check())

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """The slate for ``req``: from the result cache when the same shape was answered moments ago (``cached``),
        else through the stages; a fresh answer that is not degraded is cached."""
        request_id = uuid.uuid4().hex
        variant, experiment = None, None
        rerank_params, version = self.rerank_params, None
        if self.experiments:
            experiment = self.experiments[0]
            variant = assign(experiment, req.user_id)
            rerank_params, version = variant.rerank, variant.model_version
        if req.rerank is not None:
            rerank_params = _with_overrides(rerank_params, req.rerank)
        if self.cache is None:
            return await self._recommend(req, request_id, experiment, variant, rerank_params, version)
        if version is None:
            self._keep_promoted_fresh()
        shape = shape_of(
            k=req.k,
            domain=req.domain,
            categories=sorted(req.filters.categories or []) if req.filters else [],
            providers=sorted(req.filters.providers or []) if req.filters else [],
            exclude=sorted(set(req.exclude_item_ids)),
            explain=req.explain,
            context=req.context.model_dump(mode="json") if req.context else None,
            experiment=[experiment.name, variant.name] if experiment and variant else None,
            rerank=rerank_params.model_dump(mode="json"),
            model=version or self._promoted,
        )
        seen = await self.cache.get(req.user_id, shape)
        if seen is not None and seen.response is not None:
            return seen.response.model_copy(update={"request_id": request_id, "cached": True})
        response = await self._recommend(req, request_id, experiment, variant, rerank_params, version)
        if seen is not None:
            await self.cache.put(req.user_id, shape, seen, response)
        return response

    async def _recommend(
        self,
        req: RecommendRequest,
        request_id: str,
        experiment: Experiment | None,
        variant: Any,
        rerank_params: RerankParams,
        version: str | None,
    ) -> RecommendResponse:
        """retrieve -> lookup -> rank -> rerank (-> explain), each with its deadline and fallback."""
        filters = Filters(
            domain=req.domain,
            categories=list(req.filters.categories or []) if req.filters else [],
            providers=list(req.filters.providers or []) if req.filters else [],
        )
        ctx = RankContext(
            when=(req.context.timestamp if req.context and req.context.timestamp else datetime.now(UTC)),
            device=req.context.device if req.context else None,
            locale=req.context.locale if req.context else None,
        )
        degraded, reasons_by_item = False, {}
        model_version: str | None = None
        user: dict[str, Any] = {}
        items: dict[str, np.ndarray] = {}
        try:
            candidates = await self._stage(
                "retrieve", self.callers.retrieve, req.user_id, filters, req.exclude_item_ids
            )
            self._keep_popular_fresh()
        except Exception as err:
            log.warning("retrieval failed (%s): serving popular items", err)
            metrics.FALLBACKS.labels("retrieve_to_popular").inc()
            degraded = True
            try:
                candidates = await self.popular(filters, req.exclude_item_ids)
            except Exception as popular_err:
                metrics.FALLBACKS.labels("unavailable").inc()
                raise Unavailable("retrieval and its popular fallback both failed; retry shortly") from popular_err
            excluded = set(req.exclude_item_ids)
            keep = [i for i, item in enumerate(candidates.item_ids) if item not in excluded]
            candidates = _subset(candidates, keep)
        retrieval_order = _retrieval_score(candidates)
        scores = retrieval_order
        if not len(candidates):  # nothing matches the filters: an empty slate, not an error
            return RecommendResponse(
                request_id=request_id,
                user_id=req.user_id,
                items=[],
                model_version=None,
                experiment=_assignment(experiment, variant),
                degraded=degraded,
            )
        if not degraded:
            try:
                user, items = await self._stage("lookup", self.callers.lookup, req.user_id, candidates.item_ids)
                scores, model_version = await self._stage(
                    "rank", self.callers.rank, user, items, candidates, ctx, version
                )
            except Exception as err:
                log.warning("feature lookup or ranking failed (%s): retrieval order", err)
                metrics.FALLBACKS.labels("rank_to_retrieval_order").inc()
                degraded, scores = True, retrieval_order
        tail = _long_tail(candidates)
        try:
            slate = await self._stage("rerank", self.callers.rerank, candidates, scores, tail, req.k, rerank_params)
        except Exception as err:
            log.warning("rerank failed (%s): score order", err)
            metrics.FALLBACKS.labels("rerank_to_score_order").inc()
            degraded, slate = True, np.argsort(-scores, kind="stable")[: req.k].tolist()
        if req.explain and model_version is not None:
            try:  # best effort: a slow or failing explanation never degrades the slate itself
                explained = await self._stage(
                    "explain", self.callers.explain, user, items, candidates, ctx, model_version, list(slate)
                )
                reasons_by_item = {candidates.item_ids[i]: e for i, e in zip(slate, explained, strict=True)}
            except Exception as err:
                log.warning("explanation failed (%s)", err)
                metrics.FALLBACKS.labels("explain_skipped").inc()
        if degraded:
            metrics.DEGRADED.inc()
        items_out = [
            RecommendedItem(
                item_id=candidates.item_ids[i],
                score=float(scores[i]),
                title=candidates.titles[i],
                domain=candidates.domains[i],
                reasons=(_reasons(candidates, i, reasons_by_item) if req.explain else None),
            )
            for i in slate
        ]
        return RecommendResponse(
            request_id=request_id,
            user_id=req.user_id,
            items=items_out,
            model_version=model_version,
            experiment=_assignment(experiment, variant),
            degraded=degraded,
        )


def _assignment(experiment: Experiment | None, variant: Any) -> ExperimentAssignment | None:
    return ExperimentAssignment(name=experiment.name, variant=variant.name) if experiment and variant else None


def _with_overrides(params: RerankParams, overrides: RerankOverrides) -> RerankParams:
    """The request's rerank knobs on top of the configured ones; boosts add to (and win over) the config's."""
    update = overrides.model_dump(exclude_none=True)
    if "boost" in update:
        update["boost"] = {**params.boost, **update["boost"]}
    return params.model_copy(update=update)


def _subset(c: CandidateSet, keep: list[int]) -> CandidateSet:
    return CandidateSet(
        [c.item_ids[i] for i in keep],
        [c.titles[i] for i in keep],
        [c.domains[i] for i in keep],
        [c.providers[i] for i in keep],
        [c.categories[i] for i in keep],
        c.vectors[keep],
        c.features[keep],
        c.long_tail[keep] if len(c.long_tail) == len(c) else np.zeros(len(keep), bool),
    )


def _matching(c: CandidateSet, filters: Filters) -> CandidateSet:
    """The candidates passing ``filters`` (the cached popular list, when Postgres cannot filter it)."""
    categories, providers = set(filters.categories), set(filters.providers)
    keep = [
        i
        for i in range(len(c))
        if (not filters.domain or c.domains[i] == filters.domain)
        and (not categories or categories.intersection(c.categories[i]))
        and (not providers or c.providers[i] in providers)
    ]
    return _subset(c, keep)


def _retrieval_score(c: CandidateSet) -> np.ndarray:
    """Without the ranker: item-item score first (the strongest source), then collaborative and content scores,
    popularity breaking ties."""
    f = {name: c.features[:, n].astype(np.float64) for n, name in enumerate(CANDIDATE_FEATURES)}
    return 10 * f["ii_score"] + f["cf_score"] + 0.5 * f["content_score"] + 0.01 * f["log_popularity"]


def _long_tail(c: CandidateSet) -> np.ndarray:
    """Long tail as retrieval marked it (rerank.head_floor); none when a caller built candidates without it."""
    return c.long_tail if len(c.long_tail) == len(c) else np.zeros(len(c), bool)


def _reasons(c: CandidateSet, i: int, explained: dict[str, list[str]]) -> list[str]:
    f = dict(zip(CANDIDATE_FEATURES, c.features[i].tolist(), strict=True))
    out = []
    if f["from_cf"]:
        out.append(f"similar to your taste (collaborative score {f['cf_score']:.3f})")
    if f["from_content"]:
        out.append(f"similar content to your recent items (content score {f['content_score']:.3f})")
    if f["from_popular"]:
        out.append("popular")
    return out + [f"feature contribution: {e}" for e in explained.get(c.item_ids[i], [])]


def run_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run ``fn`` in a helper thread and stop waiting after ``timeout_s`` (the thread finishes on its own)."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(fn).result(timeout=timeout_s)
    finally:
        executor.shutdown(wait=False)
