"""Degradation rules of the orchestrator, with stub stages: a late or failing stage degrades the answer instead of
failing it, a popular list is kept ready for retrieval failures, and only when nothing at all can be served does
``recommend`` raise Unavailable (the HTTP layer's 503)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from recstack.stages.retrieve import CANDIDATE_FEATURES, CandidateSet, source_order
from serving.callers import Callers
from serving.orchestrate import Recommender, Unavailable
from serving.runtimes import Features, Reranker, Scores
from serving.schemas import RecommendRequest


def candidates(prefix: str, n: int, domains: tuple[str, ...] = ("movies",)) -> CandidateSet:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 64)).astype(np.float32)
    features = np.zeros((n, len(CANDIDATE_FEATURES)), np.float32)
    features[:, CANDIDATE_FEATURES.index("cf_score")] = np.linspace(1, 0, n)  # retrieval order = list order
    features[:, CANDIDATE_FEATURES.index("log_popularity")] = np.linspace(5, 1, n)
    return CandidateSet(
        item_ids=[f"{prefix}{i}" for i in range(n)],
        titles=[f"t{i}" for i in range(n)],
        domains=[domains[i % len(domains)] for i in range(n)],
        providers=[f"p{i % 7}" for i in range(n)],
        categories=[[f"c{i % 5}"] for i in range(n)],
        vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        features=features,
    )


class Stages:
    """Stub stages whose failures and delays a test switches on."""

    def __init__(self) -> None:
        self.fail: set[str] = set()
        self.delay: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def caller(self, name: str, fn: Any) -> Any:
        async def call(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            await asyncio.sleep(self.delay.get(name, 0))
            if name in self.fail:
                raise ConnectionError(f"{name} down")
            return fn(*args)

        return call

    def callers(self) -> Callers:
        reranker = Reranker()
        return Callers(
            self.caller("retrieve", lambda *a: candidates("r", 60)),
            self.caller("popular", lambda *a: candidates("pop", 40, ("movies", "music"))),
            self.caller("lookup", lambda *a: Features({}, {})),
            self.caller("rank", lambda features, c, *a: Scores(np.arange(len(c), dtype=np.float64), "v1")),
            self.caller("rerank", reranker.rerank),
            self.caller("explain", lambda *a: []),
        )


def run(recommender: Recommender, **request: Any) -> Any:
    return asyncio.run(recommender.recommend(RecommendRequest(user_id="u1", **request)))


def test_all_stages_up_ranks_by_the_model() -> None:
    stages = Stages()
    out = run(Recommender(stages.callers(), deadline_s=0.5), k=5)
    assert not out.degraded and out.model_version == "v1" and len(out.items) == 5
    assert out.items[0].item_id == "r59"  # the stub ranker scores the last retrieved item highest


@pytest.mark.parametrize("stage", ["lookup", "rank"])
@pytest.mark.parametrize("how", ["fails", "late"])
def test_a_failing_or_late_ranking_stage_serves_retrieval_order(stage: str, how: str) -> None:
    stages = Stages()
    if how == "fails":
        stages.fail.add(stage)
    else:
        stages.delay[stage] = 0.3
    out = run(Recommender(stages.callers(), deadline_s=0.05), k=5)
    assert out.degraded and out.model_version is None
    assert out.items[0].item_id == "r0"  # retrieval order


def test_retrieval_failing_serves_popular_and_only_nothing_at_all_is_unavailable() -> None:
    stages = Stages()
    stages.fail.add("retrieve")
    out = run(Recommender(stages.callers(), deadline_s=0.5), k=5)
    assert out.degraded and out.items[0].item_id.startswith("pop")
    stages.fail.add("popular")
    with pytest.raises(Unavailable):
        run(Recommender(stages.callers(), deadline_s=0.5), k=5)


def test_a_popular_list_is_kept_for_when_retrieval_and_postgres_are_down() -> None:
    stages = Stages()
    recommender = Recommender(stages.callers(), deadline_s=0.5)

    async def scenario() -> tuple[Any, Any]:
        await recommender.recommend(RecommendRequest(user_id="u1"))  # healthy: refreshes popular in the background
        await asyncio.sleep(0.05)
        stages.fail.update({"retrieve", "popular"})
        unfiltered = await recommender.recommend(RecommendRequest(user_id="u1", k=5))
        music = await recommender.recommend(RecommendRequest(user_id="u1", k=5, domain="music"))
        return unfiltered, music

    unfiltered, music = asyncio.run(scenario())
    assert stages.calls["popular"] >= 2  # the background refresh, then the failing attempts
    assert unfiltered.degraded and len(unfiltered.items) == 5
    assert music.degraded and music.items and all(i.domain == "music" for i in music.items)


def test_a_model_ordered_by_one_source_is_served_without_the_lookup_and_rank_calls() -> None:
    """Once the Ranker has said the model orders by the item-item score, the orchestrator applies that order itself:
    the same slate, two stage calls fewer (a hop each in the graph). Explanations still go through the Ranker."""
    stages = Stages()
    callers = stages.callers()

    def ranked_by_item_item(features: Features, c: CandidateSet, *args: Any) -> Scores:
        return Scores(source_order(c.features, "ii_score"), "v2")

    callers.rank = stages.caller("rank", ranked_by_item_item)
    callers.order = stages.caller("order", lambda version: ("ii_score", "v2"))
    listed = candidates("r", 60)
    listed.features[:, CANDIDATE_FEATURES.index("ii_score")] = np.random.default_rng(1).random(60)
    callers.retrieve = stages.caller("retrieve", lambda *a: listed)
    recommender = Recommender(callers, deadline_s=0.5)

    async def three() -> list[Any]:
        out = [await recommender.recommend(RecommendRequest(user_id="u1", k=5))]  # order not known yet: the stages
        await asyncio.sleep(0.05)  # the Ranker's answer arrives in the background
        out.append(await recommender.recommend(RecommendRequest(user_id="u1", k=5)))
        out.append(await recommender.recommend(RecommendRequest(user_id="u1", k=5, explain=True)))
        return out

    first, second, explained = asyncio.run(three())
    assert [i.item_id for i in second.items] == [i.item_id for i in first.items]
    assert second.model_version == first.model_version == "v2" and not second.degraded
    assert stages.calls["rank"] == 2 and stages.calls["lookup"] == 2  # the first and the explained request only
    assert [i.item_id for i in explained.items] == [i.item_id for i in first.items]


def test_every_explained_item_has_a_reason_even_when_the_explain_stage_fails() -> None:
    """The sources that found an item are its reasons; the model's feature contributions come on top when the
    explain stage answers. An item only the item-item source found still says why it is there (CI once served
    a slate with empty reasons when the explain call was late)."""
    stages = Stages()
    callers = stages.callers()
    listed = candidates("r", 30)
    listed.features[:, CANDIDATE_FEATURES.index("ii_score")] = np.linspace(0.9, 0.1, 30)
    listed.features[:, CANDIDATE_FEATURES.index("from_ii")] = 1.0
    callers.retrieve = stages.caller("retrieve", lambda *a: listed)
    stages.fail.add("explain")
    out = run(Recommender(callers, deadline_s=0.5), k=5, explain=True)
    assert not out.degraded and len(out.items) == 5
    assert all(item.reasons and "item-item score" in item.reasons[0] for item in out.items)
