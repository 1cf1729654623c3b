"""In-process stages: work that outlives its deadline holds only its own stage's threads, and once all of them are
held, the stage refuses at once instead of queueing requests behind it."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from serving.callers import STAGE_THREADS, StageBusy, StagePool, in_process_callers


def _stages(hang: threading.Event) -> Any:
    def retrieve(*_: Any) -> str:
        hang.wait(10)  # a store that stopped answering (bounded here as by the clients' timeouts)
        return "candidates"

    quick = SimpleNamespace(
        lookup=lambda *_: "features",
        rank=lambda *_: "scores",
        explain=lambda *_: [],
        promoted=lambda: "v1",
        order=lambda *_: None,
        ready=lambda: True,
    )
    retriever = SimpleNamespace(
        retrieve=retrieve, popular=lambda *_: "popular", similar=lambda *_: [], ready=lambda: True
    )
    return in_process_callers(retriever, quick, quick, SimpleNamespace(rerank=lambda *_: [0]))  # type: ignore[arg-type]


def test_a_hung_stage_holds_only_its_own_threads_and_then_refuses_at_once() -> None:
    hang = threading.Event()
    callers = _stages(hang)

    async def scenario() -> None:
        for _ in range(STAGE_THREADS):  # each request gives up at its 50 ms deadline, its work still running
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(callers.retrieve("u1"), timeout=0.05)
        started = time.perf_counter()
        assert await asyncio.wait_for(callers.popular("u1"), timeout=1) == "popular"  # the fallback still runs
        assert await asyncio.wait_for(callers.lookup("u1"), timeout=1) == "features"
        assert time.perf_counter() - started < 0.5
        started = time.perf_counter()
        with pytest.raises(StageBusy):
            await callers.retrieve("u1")
        assert time.perf_counter() - started < 0.05  # refused now, not after a wait in the queue
        hang.set()  # the store answers again: the held threads come back
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await asyncio.wait_for(callers.retrieve("u1"), timeout=1) == "candidates"
                break
            except StageBusy:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_calls_still_queued_when_their_caller_gives_up_never_run() -> None:
    hang = threading.Event()
    ran: list[int] = []

    def counted(n: int) -> int:
        hang.wait(10)
        ran.append(n)
        return n

    pool = StagePool("counted", threads=1)
    call = pool.caller(counted)

    async def scenario() -> None:
        first = asyncio.ensure_future(call(0))  # holds the only thread
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(1), timeout=0.05)  # queued behind it, then given up
        hang.set()
        assert await first == 0
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert ran == [0]
