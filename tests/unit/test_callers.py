"""The graph's stage plumbing: every method the orchestration calls through a Serve handle exists on that stage's
deployment (the deployment is the stage runtime itself, so a method added to a runtime is callable at once), and the
in-process callers run the same runtime methods."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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
