"""One /recommend as named steps: plan -> retrieve -> score -> rerank -> respond, each stage with a deadline.

The ``Recommender`` reaches the stages through ``Callers`` (serving/callers.py: in-process threads or Ray Serve
handles). A failing or late stage degrades the answer instead of failing it:
  * retrieval fails -> popular items (cached), degraded;
  * feature lookup or ranking fails -> retrieval order, degraded;
  * rerank fails -> score order, degraded.
Before any stage, the result cache (serving/result_cache.py) may answer with the slate the same request shape got a
few seconds ago; in both serve modes that lookup is here, in the orchestration, and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from recstack.stages.rank import RankContext
from recstack.stages.rerank import RerankParams
from recstack.stages.retrieve import CANDIDATE_FEATURES, CandidateSet, Filters, source_order
from serving import metrics
from serving.callers import Callers
from serving.experiments import Experiment, Variant, assign
from serving.result_cache import ResultCache, shape_of
from serving.runtimes import MODEL_CHECK_S, Features
from serving.schemas import (
    ExperimentAssignment,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RerankOverrides,
)

log = logging.getLogger("recstack.serving")
POPULAR_REFRESH_S = 60
T = TypeVar("T")


class StageTimeout(RuntimeError):
    pass


class Unavailable(RuntimeError):
    """Nothing to answer with: retrieval and its popular fallback both failed (overload, or the stores are down and
    no popular list was cached yet). The HTTP layer answers 503 with Retry-After."""


@dataclass
class Plan:
    """What one request asks for, settled before any stage runs."""

    request_id: str
    experiment: Experiment | None
    variant: Variant | None
    rerank: RerankParams  # configured, else the variant's, with the request's overrides on top
    model_version: str | None  # the variant's pinned model; None: the promoted one
    filters: Filters
    ctx: RankContext


@dataclass
class Scored:
    """The score step's result: a score per candidate, from the model or (degraded) from retrieval."""

    scores: np.ndarray
    features: Features | None
    model_version: str | None
    degraded: bool


class Recommender:
    """One /recommend: plan -> retrieve -> score (lookup + rank) -> rerank -> respond, with per-stage deadlines and
    degradation."""

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
        # per pinned version (None: the promoted model): (read at, its single-source order or None), and the re-read
        self._orders: dict[str | None, tuple[float, tuple[str, str] | None]] = {}
        self._order_checks: dict[str | None, asyncio.Task[Any]] = {}

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """The slate for ``req``: from the result cache when the same shape was answered moments ago (``cached``),
        else through the stages; a fresh answer that is not degraded is cached."""
        plan = self.plan(req)
        if self.cache is None:
            return await self._through_stages(req, plan)
        if plan.model_version is None:
            self._keep_promoted_fresh()
        shape = self._shape(req, plan)
        seen = await self.cache.get(req.user_id, shape)
        if seen is not None and seen.response is not None:
            return seen.response.model_copy(update={"request_id": plan.request_id, "cached": True})
        response = await self._through_stages(req, plan)
        if seen is not None:
            await self.cache.put(req.user_id, shape, seen, response)
        return response

    def plan(self, req: RecommendRequest) -> Plan:
        """The request's id, experiment variant, rerank parameters, pinned model, filters and ranking context."""
        experiment, variant = None, None
        rerank_params, version = self.rerank_params, None
        if self.experiments:
            experiment = self.experiments[0]
            variant = assign(experiment, req.user_id)
            rerank_params, version = variant.rerank, variant.model_version
        if req.rerank is not None:
            rerank_params = _with_overrides(rerank_params, req.rerank)
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
        return Plan(uuid.uuid4().hex, experiment, variant, rerank_params, version, filters, ctx)

    def _shape(self, req: RecommendRequest, plan: Plan) -> str:
        """The result cache's key for what decides the answer, besides the user."""
        return shape_of(
            k=req.k,
            domain=req.domain,
            categories=sorted(req.filters.categories or []) if req.filters else [],
            providers=sorted(req.filters.providers or []) if req.filters else [],
            exclude=sorted(set(req.exclude_item_ids)),
            explain=req.explain,
            context=req.context.model_dump(mode="json") if req.context else None,
            experiment=[plan.experiment.name, plan.variant.name] if plan.experiment and plan.variant else None,
            rerank=plan.rerank.model_dump(mode="json"),
            model=plan.model_version or self._promoted,
        )

    async def _through_stages(self, req: RecommendRequest, plan: Plan) -> RecommendResponse:
        candidates, degraded = await self.retrieve(req, plan)
        if not len(candidates):  # nothing matches the filters: an empty slate, not an error
            return self._response(req, plan, [], None, degraded)
        scored = await self.score(req, plan, candidates, degraded)
        slate, rerank_degraded = await self.rerank(req, plan, candidates, scored.scores)
        return await self.respond(req, plan, candidates, scored, slate, scored.degraded or rerank_degraded)

    async def _stage(self, name: str, call: Awaitable[T], deadline: float | None = None) -> T:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call, timeout=deadline or self.deadline_s)
        except TimeoutError as err:
            raise StageTimeout(f"{name} exceeded its deadline") from err
        finally:
            metrics.STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)

    # -- retrieve ---------------------------------------------------------------------------------------------------
    async def retrieve(self, req: RecommendRequest, plan: Plan) -> tuple[CandidateSet, bool]:
        """(candidates, degraded): the user's retrieval, else the popular list minus the excluded items."""
        try:
            candidates = await self._stage(
                "retrieve", self.callers.retrieve(req.user_id, plan.filters, req.exclude_item_ids, plan.model_version)
            )
            self._keep_popular_fresh()
            return candidates, False
        except Exception as err:
            log.warning("retrieval failed (%s): serving popular items", err)
            metrics.FALLBACKS.labels("retrieve_to_popular").inc()
        try:
            candidates = await self.popular(plan.filters)
        except Exception as popular_err:
            metrics.FALLBACKS.labels("unavailable").inc()
            raise Unavailable("retrieval and its popular fallback both failed; retry shortly") from popular_err
        excluded = set(req.exclude_item_ids)
        return candidates.take([i for i, item in enumerate(candidates.item_ids) if item not in excluded]), True

    async def popular(self, filters: Filters) -> CandidateSet:
        """Popular items passing ``filters``: the unfiltered list is kept for POPULAR_REFRESH_S, and served (filtered
        here) when Postgres cannot answer either."""
        unfiltered = not (filters.domain or filters.categories or filters.providers)
        fresh = time.monotonic() - self._popular_at < POPULAR_REFRESH_S
        if unfiltered and self._popular is not None and fresh:
            return self._popular
        try:
            found = await self._stage("popular", self.callers.popular(filters, []), deadline=2 * self.deadline_s)
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
                    await self.popular(Filters())
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

    def _single_source_order(self, version: str | None) -> tuple[str, str] | None:
        """(source, model version) when the model ranking this request orders by one source's score (its ranker did
        not beat that source: serving/runtimes.py Ranker.rank), as the Ranker said at most MODEL_CHECK_S ago; None
        when its ranker scores or it is not known yet. Re-read in the background, like the promoted version."""
        read_at, order = self._orders.get(version, (-float("inf"), None))
        running = self._order_checks.get(version)
        if self.callers.order and time.monotonic() - read_at >= MODEL_CHECK_S and (running is None or running.done()):
            ask = self.callers.order

            async def check() -> None:
                try:
                    found = await asyncio.wait_for(ask(version), timeout=2 * self.deadline_s)
                    self._orders[version] = (time.monotonic(), found)
                except Exception as err:  # unknown: the full lookup + rank path serves meanwhile
                    log.debug("model order not read (%s)", err)
                    self._orders[version] = (time.monotonic(), None)

            self._order_checks[version] = asyncio.get_running_loop().create_task(check())
        return order

    # -- score, rerank, respond -------------------------------------------------------------------------------------
    async def score(self, req: RecommendRequest, plan: Plan, candidates: CandidateSet, degraded: bool) -> Scored:
        """Features (lookup) then the model's scores (rank); retrieval order when either fails, or when retrieval
        was degraded already (popular items: nothing for the model to personalise). A model that orders by one
        source's score needs neither: that order is computed here, without the two stage calls (the same function
        the Ranker applies, recstack.stages.retrieve.source_order), unless the request asks for explanations."""
        retrieval_order = _retrieval_score(candidates)
        if degraded:
            return Scored(retrieval_order, None, None, True)
        order = None if req.explain else self._single_source_order(plan.model_version)
        if order is not None:
            return Scored(source_order(candidates.features, order[0]), None, order[1], False)
        try:
            features = await self._stage("lookup", self.callers.lookup(req.user_id, candidates.item_ids))
            ranked = await self._stage("rank", self.callers.rank(features, candidates, plan.ctx, plan.model_version))
        except Exception as err:
            log.warning("feature lookup or ranking failed (%s): retrieval order", err)
            metrics.FALLBACKS.labels("rank_to_retrieval_order").inc()
            return Scored(retrieval_order, None, None, True)
        return Scored(ranked.scores, features, ranked.model_version, False)

    async def rerank(
        self, req: RecommendRequest, plan: Plan, candidates: CandidateSet, scores: np.ndarray
    ) -> tuple[list[int], bool]:
        """(slate positions into ``candidates``, degraded): diversity and exposure rules, else score order."""
        try:
            return await self._stage("rerank", self.callers.rerank(candidates, scores, req.k, plan.rerank)), False
        except Exception as err:
            log.warning("rerank failed (%s): score order", err)
            metrics.FALLBACKS.labels("rerank_to_score_order").inc()
            return np.argsort(-scores, kind="stable")[: req.k].tolist(), True

    async def respond(
        self,
        req: RecommendRequest,
        plan: Plan,
        candidates: CandidateSet,
        scored: Scored,
        slate: list[int],
        degraded: bool,
    ) -> RecommendResponse:
        """The response body, with each item's reasons when asked (``explain``: best effort, never degrading)."""
        explained: dict[str, list[str]] = {}
        if req.explain and scored.model_version is not None and scored.features is not None:
            try:
                found = await self._stage(
                    "explain",
                    self.callers.explain(scored.features, candidates, plan.ctx, scored.model_version, list(slate)),
                )
                explained = {candidates.item_ids[i]: e for i, e in zip(slate, found, strict=True)}
            except Exception as err:
                log.warning("explanation failed (%s)", err)
                metrics.FALLBACKS.labels("explain_skipped").inc()
        if degraded:
            metrics.DEGRADED.inc()
        items = [
            RecommendedItem(
                item_id=candidates.item_ids[i],
                score=float(scored.scores[i]),
                title=candidates.titles[i],
                domain=candidates.domains[i],
                reasons=(_reasons(candidates, i, explained) if req.explain else None),
            )
            for i in slate
        ]
        return self._response(req, plan, items, scored.model_version, degraded)

    @staticmethod
    def _response(
        req: RecommendRequest, plan: Plan, items: list[RecommendedItem], model_version: str | None, degraded: bool
    ) -> RecommendResponse:
        experiment, variant = plan.experiment, plan.variant
        return RecommendResponse(
            request_id=plan.request_id,
            user_id=req.user_id,
            items=items,
            model_version=model_version,
            experiment=ExperimentAssignment(name=experiment.name, variant=variant.name)
            if experiment and variant
            else None,
            degraded=degraded,
        )


def _with_overrides(params: RerankParams, overrides: RerankOverrides) -> RerankParams:
    """The request's rerank knobs on top of the configured ones; boosts add to (and win over) the config's."""
    update = overrides.model_dump(exclude_none=True)
    if "boost" in update:
        update["boost"] = {**params.boost, **update["boost"]}
    return params.model_copy(update=update)


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
    return c.take(keep)


def _retrieval_score(c: CandidateSet) -> np.ndarray:
    """Without the ranker: item-item score first (the strongest source), then collaborative and content scores,
    popularity breaking ties."""
    f = {name: c.features[:, n].astype(np.float64) for n, name in enumerate(CANDIDATE_FEATURES)}
    return 10 * f["ii_score"] + f["cf_score"] + 0.5 * f["content_score"] + 0.01 * f["log_popularity"]


def _reasons(c: CandidateSet, i: int, explained: dict[str, list[str]]) -> list[str]:
    """Why the item is in the slate: each source that found it (every candidate has one), then the model's feature
    contributions when the explain stage answered."""
    f = dict(zip(CANDIDATE_FEATURES, c.features[i].tolist(), strict=True))
    out = []
    if f["from_ii"]:
        out.append(f"people who liked what you liked also liked it (item-item score {f['ii_score']:.3f})")
    if f["from_cf"]:
        out.append(f"similar to your taste (collaborative score {f['cf_score']:.3f})")
    if f["from_content"]:
        out.append(f"similar content to your recent items (content score {f['content_score']:.3f})")
    if f["from_popular"]:
        out.append("popular")
    return out + [f"feature contribution: {e}" for e in explained.get(c.item_ids[i], [])]
