"""The graph's stage plumbing: every method the orchestration calls through a Serve handle exists on that stage's
deployment (the deployment is the stage runtime itself, so a method added to a runtime is callable at once), and the
in-process callers run the same runtime methods."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from serving import http
from serving.app import LookupDeployment, RankerDeployment, RetrieverDeployment
from serving.callers import handle_callers
from serving.runtimes import Reranker


class RecordingHandle:
    """A Serve handle stand-in that records which deployment methods the callers reach for."""

    def __init__(self) -> None:
        self.methods: set[str] = set()
        self.options_asked: dict[str, Any] = {}

    def options(self, **options: Any) -> RecordingHandle:
        self.options_asked.update(options)
        return self

    def __getattr__(self, name: str) -> Any:
        self.methods.add(name)
        return SimpleNamespace(remote=None)


def test_every_handle_call_is_a_method_of_its_deployment() -> None:
    deployments = {
        "Retriever": RetrieverDeployment,
        "FeatureLookup": LookupDeployment,
        "Ranker": RankerDeployment,
    }
    handles = {name: RecordingHandle() for name in deployments}
    handle_callers(handles["Retriever"], handles["FeatureLookup"], handles["Ranker"], Reranker())
    for name, deployment in deployments.items():
        assert handles[name].methods, name
        stage = deployment.func_or_class  # type: ignore[attr-defined]
        missing = [m for m in sorted(handles[name].methods) if not callable(getattr(stage, m, None))]
        assert missing == [], f"{name} deployment lacks {missing}"


def test_stage_calls_go_by_value() -> None:
    """Whatever Serve defaulted to where the handles were bound, the stage calls take the inter-deployment gRPC path
    (the actor-task path cost twice the latency and CPU a hop, serving/callers.py BY_VALUE)."""
    retriever, lookup, ranker = RecordingHandle(), RecordingHandle(), RecordingHandle()
    handle_callers(retriever, lookup, ranker, Reranker())
    assert all(h.options_asked == {"_by_reference": False} for h in (retriever, lookup, ranker))


def test_per_request_stage_methods_run_on_the_replica_loop() -> None:
    """Serve runs coroutine methods on the replica's event loop, sync ones on a thread pool (a hand-off each way per
    hop); the methods every graph request calls are coroutines, the rest keep their sync signatures."""
    import inspect

    hot = [(RetrieverDeployment, "retrieve"), (LookupDeployment, "lookup"), (RankerDeployment, "rank")]
    for deployment, method in hot:
        stage = deployment.func_or_class  # type: ignore[attr-defined]
        assert inspect.iscoroutinefunction(getattr(stage, method)), method
    assert not inspect.iscoroutinefunction(RetrieverDeployment.func_or_class.ready)  # type: ignore[attr-defined]


class FakeResponse:
    """A DeploymentResponse stand-in: answers ``outcome``, or (None) when ``answer()`` is called; records
    ``cancel()``."""

    def __init__(self, outcome: Any = None) -> None:
        self.outcome, self.cancelled = outcome, False
        self.answered: asyncio.Future[Any] | None = None

    def answer(self, outcome: Any) -> None:
        assert self.answered is not None
        self.answered.set_result(outcome)

    def __await__(self) -> Any:
        if self.outcome is not None:
            return self.outcome
        self.answered = asyncio.get_running_loop().create_future()
        return (yield from self.answered.__await__())

    def cancel(self) -> None:
        self.cancelled = True


class StageHandle:
    """A stage deployment's handle stand-in: every method's ``remote()`` answers with ``outcome``."""

    def __init__(self, outcome: Any = None) -> None:
        self.responses: list[FakeResponse] = []
        self.ready = SimpleNamespace(remote=self._remote)
        self.outcome = outcome

    def _remote(self, *_: Any) -> FakeResponse:
        self.responses.append(FakeResponse(self.outcome))
        return self.responses[-1]

    def options(self, **_: Any) -> StageHandle:
        return self

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=self._remote)


def test_readiness_keeps_one_call_in_flight_to_a_stage_that_does_not_answer() -> None:
    """Serve's autoscaler counts calls queued at a handle as load: probes of a stage that has no replica yet must not
    queue one call each (a stage upscaled 1 -> 4 with no traffic, bench/probe_queued_checks.py)."""
    retriever = StageHandle(outcome=None)  # no replica: never answers
    ready = handle_callers(retriever, StageHandle(True), StageHandle(True), Reranker()).ready["retriever"]

    async def scenario() -> None:
        for _ in range(5):  # five probes, each giving up at its deadline
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ready(), timeout=0.02)
        assert len(retriever.responses) == 1 and not retriever.responses[0].cancelled
        retriever.responses[0].answer(True)  # the replica is up: the call in flight answers the next probe
        await asyncio.sleep(0)  # (after its probe gave up)
        assert await asyncio.wait_for(ready(), timeout=1) is True
        assert len(retriever.responses) == 1
        retriever.outcome = True
        assert await asyncio.wait_for(ready(), timeout=1) is True  # and the probe after that asks afresh
        assert len(retriever.responses) == 2

    asyncio.run(scenario())


def test_a_stage_call_given_up_at_its_deadline_is_cancelled_at_the_handle() -> None:
    retriever = StageHandle(outcome=None)  # never answers
    retrieve = handle_callers(retriever, StageHandle(), StageHandle(), Reranker()).retrieve

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(retrieve("u1", None, [], None), timeout=0.05)  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert [r.cancelled for r in retriever.responses] == [True]


def test_readyz_checks_run_side_by_side_and_each_answers_within_its_bound(monkeypatch: Any) -> None:
    monkeypatch.setattr(http, "READY_CHECK_S", 0.2)
    monkeypatch.setattr(http.stack, "check_postgres", lambda settings: None)
    monkeypatch.setattr(http.stack, "check_redis", lambda settings: None)
    hung: list[asyncio.Future[bool]] = []

    async def never() -> bool:
        hung.append(asyncio.get_running_loop().create_future())
        return await hung[-1]

    async def ok() -> bool:
        return True

    stages = SimpleNamespace(ready={"model": ok, "retriever": never, "feature_lookup": never})
    backend = http.Backend(SimpleNamespace(), None, stages)  # type: ignore[arg-type]

    async def scenario() -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        return await backend.ready(), time.perf_counter() - started

    checks, took = asyncio.run(scenario())
    assert checks["postgres"] == checks["redis"] == "ok" and checks["model"] == "loaded"
    assert checks["retriever"].startswith("starting") and checks["feature_lookup"].startswith("starting")
    assert took < 0.35, took  # side by side: one bound, not one per hung check
    assert len(hung) == 2 and all(f.cancelled() for f in hung)  # nothing left waiting after the answer
