"""The result cache's rules through the orchestrator, with stub stages and a dict standing in for Redis: a repeated
request shape is answered from the cache (``cached``, a new request id, no stage called), the user's next event, a new
materialization or a new model makes it a miss, degraded answers are never kept, and a failing Redis is only a miss."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from recstack.features.online import MATERIALIZED_VERSION_KEY
from recstack.settings import Settings
from serving import metrics, result_cache
from serving.orchestrate import Recommender
from serving.result_cache import ResultCache, invalidate, shape_of
from serving.schemas import RecommendRequest, RecommendResponse
from tests.unit.test_recommender import Stages


class FakeRedis:
    """The few commands the cache uses, on a dict (values as bytes, as redis-py returns them; expiry ignored)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttl: dict[str, int] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("redis down")

    async def mget(self, *keys: str) -> list[bytes | None]:
        self._check()
        return [self.data.get(k) for k in keys]

    async def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        self._check()
        self.data[key] = value
        if ex is not None:
            self.ttl[key] = ex

    def incr(self, key: str) -> int:
        self._check()
        self.data[key] = str(int(self.data.get(key, b"0")) + 1).encode()
        return int(self.data[key])

    def expire(self, key: str, seconds: int) -> None:
        self.ttl[key] = seconds

    def pipeline(self, transaction: bool = True) -> FakeRedis:
        return self

    def execute(self) -> None:
        pass

    def __enter__(self) -> FakeRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def cached_recommender(stages: Stages, redis: FakeRedis, ttl_s: int = 30) -> Recommender:
    cache = ResultCache(Settings(result_cache_ttl_s=ttl_s), client=redis)
    return Recommender(stages.callers(), deadline_s=0.5, cache=cache)


def ask(recommender: Recommender, user: str = "u1", **request: Any) -> RecommendResponse:
    return asyncio.run(recommender.recommend(RecommendRequest(user_id=user, **request)))


def counts() -> tuple[float, float]:
    return metrics.RESULT_CACHE_HITS._value.get(), metrics.RESULT_CACHE_MISSES._value.get()


def test_the_shape_hash_is_stable_and_sees_every_part() -> None:
    base = {"k": 10, "domain": None, "exclude": ["a", "b"], "model": "v1"}
    assert shape_of(**base) == shape_of(**dict(reversed(list(base.items()))))
    assert len({shape_of(**base), shape_of(**{**base, "k": 11}), shape_of(**{**base, "model": "v2"})}) == 3
    assert result_cache.slate_key("u:1", "ab") == "recstack:slates:u:1:ab"
    assert result_cache.generation_key("u:1") != result_cache.slate_key("u", "1")  # no layout collision


def test_a_repeated_request_is_answered_from_the_cache() -> None:
    stages, redis = Stages(), FakeRedis()
    recommender = cached_recommender(stages, redis)
    hits, misses = counts()
    first = ask(recommender, k=5)
    again = ask(recommender, k=5)
    assert not first.cached and again.cached
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    assert again.request_id != first.request_id  # a new impression, logged under its own id
    assert again.model_version == first.model_version and not again.degraded
    assert stages.calls["retrieve"] == 1 and stages.calls["rank"] == 1
    assert counts() == (hits + 1, misses + 1)
    assert set(redis.ttl.values()) == {30}


@pytest.mark.parametrize(
    "other",
    [
        {"k": 6},
        {"k": 5, "domain": "music"},
        {"k": 5, "exclude_item_ids": ["r59"]},
        {"k": 5, "filters": {"categories": ["c1"]}},
        {"k": 5, "rerank": {"mmr_lambda": 1.0}},
        {"k": 5, "context": {"device": "tv"}},
        {"k": 5, "explain": True},
    ],
)
def test_another_request_shape_is_a_miss(other: dict[str, Any]) -> None:
    recommender = cached_recommender(Stages(), FakeRedis())
    ask(recommender, k=5)
    assert not ask(recommender, **other).cached
    assert not ask(recommender, user="u2", k=5).cached  # another user


def test_set_like_lists_in_another_order_share_the_slate() -> None:
    recommender = cached_recommender(Stages(), FakeRedis())
    ask(recommender, k=5, exclude_item_ids=["a", "b"], filters={"providers": ["p1", "p2"]})
    assert ask(recommender, k=5, exclude_item_ids=["b", "a", "a"], filters={"providers": ["p2", "p1"]}).cached


def test_the_users_next_event_or_a_new_materialization_ends_the_cached_slate() -> None:
    redis = FakeRedis()
    recommender = cached_recommender(Stages(), redis)
    ask(recommender, k=5)
    ask(recommender, user="u2", k=5)
    invalidate(redis, "u1")  # what /feedback does after storing u1's event
    assert not ask(recommender, k=5).cached
    assert ask(recommender, k=5).cached  # cached again under the new generation
    assert ask(recommender, user="u2", k=5).cached  # other users keep theirs
    assert redis.ttl[result_cache.generation_key("u1")] == result_cache.GENERATION_TTL_S
    redis.data[MATERIALIZED_VERSION_KEY] = b"7"  # `recstack materialize` bumps it
    assert not ask(recommender, k=5).cached and not ask(recommender, user="u2", k=5).cached


def test_an_event_during_a_miss_makes_its_answer_unusable() -> None:
    """The answer of a request that started before the event is written under the old generation: never served."""
    stages, redis = Stages(), FakeRedis()
    recommender = cached_recommender(stages, redis)
    stages.delay["rank"] = 0.05

    async def scenario() -> RecommendResponse:
        slow = asyncio.create_task(recommender.recommend(RecommendRequest(user_id="u1", k=5)))
        await asyncio.sleep(0.02)  # the slow request has read the generation and is ranking
        invalidate(redis, "u1")
        await slow
        return await recommender.recommend(RecommendRequest(user_id="u1", k=5))

    assert not asyncio.run(scenario()).cached


def test_a_new_promoted_model_is_a_miss() -> None:
    stages, redis = Stages(), FakeRedis()
    promoted = ["v1"]
    callers = stages.callers()

    async def current() -> str:
        return promoted[0]

    callers.promoted = current
    recommender = Recommender(callers, 0.5, cache=ResultCache(Settings(), client=redis))

    async def scenario() -> list[bool]:
        out = []
        for version in ("v1", "v1", "v1", "v2", "v2"):
            promoted[0] = version
            recommender._promoted_at = -float("inf")  # as if the check interval had passed
            await asyncio.sleep(0.01)
            out.append((await recommender.recommend(RecommendRequest(user_id="u1", k=5))).cached)
        return out

    # first request: the version is being read in the background (key without it); then v1 (miss, hit), v2 (miss, hit)
    assert asyncio.run(scenario()) == [False, False, True, False, True]


def test_a_degraded_answer_is_not_cached() -> None:
    stages, redis = Stages(), FakeRedis()
    recommender = cached_recommender(stages, redis)
    stages.fail.add("rank")
    assert ask(recommender, k=5).degraded
    stages.fail.clear()
    fresh = ask(recommender, k=5)
    assert not fresh.cached and not fresh.degraded
    assert ask(recommender, k=5).cached


def test_a_failing_redis_is_a_miss_never_an_error() -> None:
    stages, redis = Stages(), FakeRedis()
    recommender = cached_recommender(stages, redis)
    redis.down = True
    hits, misses = counts()
    answers = [ask(recommender, k=5) for _ in range(3)]
    assert all(not a.cached and not a.degraded and len(a.items) == 5 for a in answers)
    assert counts() == (hits, misses + 3) and stages.calls["retrieve"] == 3
    redis.down = False
    ask(recommender, k=5)
    assert ask(recommender, k=5).cached


def test_ttl_zero_means_no_cache() -> None:
    from serving.app import AppConfig, build_backend

    backend = build_backend(Settings(result_cache_ttl_s=0), AppConfig(), Stages().callers())
    assert backend.recommender.cache is None


def test_the_response_schema_says_cached_defaults_to_false() -> None:
    from serving.http import create_api

    class Stub:
        recommender = impressions = None

    schema = create_api(Stub(), Settings()).openapi()  # type: ignore[arg-type]
    cached = schema["components"]["schemas"]["RecommendResponse"]["properties"]["cached"]
    assert cached["type"] == "boolean" and cached["default"] is False
