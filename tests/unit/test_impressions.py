"""Impressions are written in batches, kept while Postgres is down (up to a bound) and never block a response."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serving.feedback import ImpressionLog
from serving.schemas import ExperimentAssignment, RecommendedItem, RecommendResponse, RequestContext


class FlakySink:
    def __init__(self, failures: int) -> None:
        self.failures, self.batches = failures, []

    def log_impressions(self, rows: list[tuple[Any, ...]]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("postgres down")
        self.batches.append(list(rows))


def response(n: int) -> RecommendResponse:
    return RecommendResponse(
        request_id=f"r{n}",
        user_id="u1",
        items=[RecommendedItem(item_id=f"i{n}", score=1.0, title="t", domain="movies")],
        model_version="v1",
        experiment=ExperimentAssignment(name="e", variant="a"),
        degraded=False,
    )


def test_slates_are_written_in_batches_and_survive_a_postgres_outage() -> None:
    sink = FlakySink(failures=2)
    log = ImpressionLog(lambda: sink, flush_s=0.01)

    async def serve() -> None:
        for n in range(30):
            log.add(response(n))
            if n % 10 == 9:
                await asyncio.sleep(0.012)
        for _ in range(100):
            if sum(len(b) for b in sink.batches) == 30:
                break
            await asyncio.sleep(0.01)

    asyncio.run(serve())
    written = [row for batch in sink.batches for row in batch]
    assert [row[0] for row in written] == [f"r{n}" for n in range(30)]  # each once, in order, after two failures
    assert len(sink.batches) < 30
    assert written[0] == ("r0", "u1", "e", "a", "v1", ["i0"], False, "{}")


def test_a_slate_is_logged_with_the_request_context_it_was_ranked_for() -> None:
    sink = FlakySink(failures=0)
    log = ImpressionLog(lambda: sink, flush_s=0.01)

    async def serve() -> None:
        log.add(response(0), RequestContext(device="mobile", locale="de-DE"))
        for _ in range(100):
            if sink.batches:
                break
            await asyncio.sleep(0.01)

    asyncio.run(serve())
    assert json.loads(sink.batches[0][0][-1]) == {"device": "mobile", "locale": "de-DE"}


def test_pending_impressions_are_bounded() -> None:
    log = ImpressionLog(lambda: FlakySink(failures=10**6), flush_s=10, max_pending=5)

    async def serve() -> None:
        for n in range(8):
            log.add(response(n))

    asyncio.run(serve())
    assert [row[0] for row in log.pending] == ["r0", "r1", "r2", "r3", "r4"]
