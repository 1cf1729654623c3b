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
