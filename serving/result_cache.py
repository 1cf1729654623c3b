"""Result cache: a served slate kept in Redis for a few seconds per user and request shape, so a user asking again
(a page reload, back navigation, a second widget) is answered without retrieval, feature lookup and ranking.

Key layout (one place; nothing else reads or writes these keys):
  * ``recstack:slates:<user_id>:<shape>`` -> ``<generation>:<materialized version>:<response JSON>``, expiring after
    ``RECSTACK_RESULT_CACHE_TTL_S``; ``<shape>`` is a hash of everything that changes the slate (``shape_of``);
  * ``recstack:slates-generation:<user_id>`` -> the user's event generation, incremented by each stored event
    (/feedback, /feedback/batch).

A lookup is one MGET (generation, materialized version, slate): a slate written under an older generation (the user
sent an event since) or an older materialization (features changed) is a miss. A miss's answer is written tagged with
the generation read *before* computing it, so an event arriving meanwhile makes it unusable at once (no stale write
race). The model version is part of the shape, so a promote or rollback is a miss too.

The cache only ever saves work: any Redis error or timeout is a miss (counted, warned about once per outage), and a
degraded answer is never written.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recstack.features.online import MATERIALIZED_VERSION_KEY
from serving import metrics
from serving.schemas import RecommendResponse

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from recstack.settings import Settings

log = logging.getLogger("recstack.serving")
SLATE_PREFIX = "recstack:slates:"
GENERATION_PREFIX = "recstack:slates-generation:"
# A generation key outlives every slate written under it (the TTL is at most an hour, settings.py): when it expires
# and reads as 0 again, no slate tagged 0 from before its first increment is left.
GENERATION_TTL_S = 2 * 3600
# A cache that answers slower than this saves nothing next to computing the slate (~20 ms of CPU here): give up, miss.
TIMEOUT_S = 0.1


def slate_key(user_id: str, shape: str) -> str:
    return f"{SLATE_PREFIX}{user_id}:{shape}"


def generation_key(user_id: str) -> str:
    return GENERATION_PREFIX + user_id


def shape_of(**parts: Any) -> str:
    """A stable hash of the request shape: every value that changes the slate (k, filters, exclusions, context,
    experiment variant, effective rerank knobs, model version). Lists that are sets (filters, exclusions) should be
    given sorted by the caller so that their order does not split the cache."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: the cached answer (None on a miss) and the versions to tag a fresh answer with."""

    response: RecommendResponse | None
    generation: bytes
    materialized: bytes


def decode(value: bytes | None, generation: bytes, materialized: bytes) -> RecommendResponse | None:
    """The stored response if it was written under the current generation and materialization, else None."""
    if value is None:
        return None
    stored_generation, stored_materialized, body = value.split(b":", 2)
    if stored_generation != generation or stored_materialized != materialized:
        return None
    return RecommendResponse.model_validate_json(body)


def encode(response: RecommendResponse, generation: bytes, materialized: bytes) -> bytes:
    body = response.model_dump_json(exclude={"cached"})  # the request id is replaced on a hit
    return generation + b":" + materialized + b":" + body.encode()


def invalidate(client: redis.Redis, user_id: str) -> None:
    """After a stored event of ``user_id``: every slate cached for the user becomes a miss (Redis errors propagate)."""
    name = generation_key(user_id)
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(name)
        pipe.expire(name, GENERATION_TTL_S)
        pipe.execute()


class ResultCache:
    """The cache as the orchestration uses it (async Redis, one client per event loop, errors are misses)."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        """``client``: an async Redis client to use on every loop (tests); by default one per event loop."""
        self.settings = settings
        self.ttl_s = settings.result_cache_ttl_s
        self._client: redis.asyncio.Redis | None = client
        self._fixed = client is not None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    def client(self) -> redis.asyncio.Redis:
        """The async client of the running loop (a client's connections belong to the loop that opened them)."""
        import redis.asyncio

        from recstack import stack

        loop = asyncio.get_running_loop()
        if self._client is None or (self._loop is not loop and not self._fixed):
            self._client = redis.asyncio.Redis.from_url(
                stack.redis_url(self.settings),
                socket_connect_timeout=TIMEOUT_S,
                socket_timeout=TIMEOUT_S,
            )
            self._loop = loop
        return self._client

    async def get(self, user_id: str, shape: str) -> Lookup | None:
        """The cached answer, or None (a miss); None too when Redis fails (nothing to tag a fresh answer with)."""
        try:
            # bytes: the client does not decode responses
            generation, materialized, value = await self.client().mget(
                generation_key(user_id), MATERIALIZED_VERSION_KEY, slate_key(user_id, shape)
            )
            generation, materialized = generation or b"0", materialized or b"0"
            found = Lookup(decode(value, generation, materialized), generation, materialized)  # type: ignore[arg-type]
        except Exception as err:
            self._failed("read", err)
            metrics.RESULT_CACHE_MISSES.inc()
            return None
        self._failing = False
        (metrics.RESULT_CACHE_HITS if found.response is not None else metrics.RESULT_CACHE_MISSES).inc()
        return found

    async def put(self, user_id: str, shape: str, seen: Lookup, response: RecommendResponse) -> None:
        """Keep a fresh, not degraded answer under the generation and materialization seen before computing it."""
        if response.degraded:
            return
        try:
            value = encode(response, seen.generation, seen.materialized)
            await self.client().set(slate_key(user_id, shape), value, ex=self.ttl_s)
        except Exception as err:
            self._failed("write", err)

    def _failed(self, what: str, err: Exception) -> None:
        metrics.FALLBACKS.labels(f"result_cache_{what}_failed").inc()
        if not self._failing:
            log.warning("result cache %s failed, answering without it (%s)", what, err)
            self._failing = True
        else:
            log.debug("result cache %s failed (%s)", what, err)
