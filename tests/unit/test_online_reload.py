"""The item feature columns are reloaded off the request path (recstack/features/online.py): after a materialization
bump a lookup answers at once with the columns it has, and the new ones arrive from a background reload."""

from __future__ import annotations

import threading
import time
from typing import Any

from recstack.features.online import MATERIALIZED_VERSION_KEY, OnlineLookup, ViewFeatures


class SlowItemsRedis:
    """What OnlineLookup calls on redis.Redis; item hashes answer after ``item_delay_s`` (a 100k-item catalog)."""

    def __init__(self) -> None:
        self.version, self.item_delay_s, self.item_reads = 1, 0.0, 0

    def get(self, key: bytes | str) -> bytes | None:
        assert key == MATERIALIZED_VERSION_KEY
        return str(self.version).encode()

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self)


class Pipeline:
    def __init__(self, redis: SlowItemsRedis) -> None:
        self.redis, self.replies, self.items = redis, [], False

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def hmget(self, key: bytes, fields: list[bytes]) -> None:
        self.items |= b"item" in key
        self.replies.append([None] * len(fields))

    def get(self, key: str) -> None:
        self.replies.append(self.redis.get(key))

    def execute(self) -> list[Any]:
        if self.items:
            self.redis.item_reads += 1
            time.sleep(self.redis.item_delay_s)
        return self.replies


def test_a_version_bump_reloads_items_in_the_background_while_lookups_answer() -> None:
    redis = SlowItemsRedis()
    lookup = OnlineLookup(
        redis,  # type: ignore[arg-type]
        "recstack",
        [ViewFeatures("user_features", "user_id", ("likes_30d",))],
        [ViewFeatures("item_features", "item_id", ("popularity_30d",))],
    )
    lookup.load_items(["i1", "i2"])
    assert lookup.lookup("u1", ["i1"]).version == 1
    redis.version, redis.item_delay_s = 2, 1.0
    reads = redis.item_reads
    answers = []

    def ask() -> None:
        started = time.perf_counter()
        answers.append((lookup.lookup("u1", ["i1", "i2"]).version, time.perf_counter() - started))

    threads = [threading.Thread(target=ask) for _ in range(4)]  # a replica's stage threads, all at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(version == 1 and seconds < 0.5 for version, seconds in answers), answers  # not waiting 1 s
    deadline = time.monotonic() + 10
    while lookup.lookup("u1", ["i1"]).version != 2:
        assert time.monotonic() < deadline, "the background reload never finished"
        time.sleep(0.05)
    assert redis.item_reads == reads + 1  # one reload, not one per waiting request
