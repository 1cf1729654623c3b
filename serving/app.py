"""The Ray Serve application, in two shapes chosen in config (``mode``):

* ``graph``: Ingress -> Retriever -> FeatureLookup -> Ranker, one deployment per stage that holds clients or a
  model, each with fractional CPUs and its own autoscaling config, composed through DeploymentHandles; the rerank
  (pure numpy over the top 100, no client, no state) runs in the ingress, on its own threads as in a fused replica;
* ``fused``: one Ingress deployment running the same stage runtimes in-process (no handle hops).

Each stage deployment is its runtime class (serving/runtimes.py) with a replica's setup in front: the handles call the
runtime's methods by name, with the runtime's typed signatures (serving/callers.py). ``build_app(args)`` is the Serve
application builder: ``serve build serving.app:build_app -o serving/serve_config.yaml`` and ``serve run
serving.app:build_app`` work, and ``recstack serve`` calls it. Nothing runs at import time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

from fastapi import FastAPI
from pydantic import BaseModel, Field, ValidationError
from ray import serve

from recstack import heap, ray_runtime, stack
from recstack.settings import Settings, get_settings
from recstack.stages.rerank import RerankParams
from serving import metrics
from serving.callers import Callers, handle_callers, in_process_callers
from serving.experiments import Experiment
from serving.http import Backend, create_api
from serving.orchestrate import Recommender
from serving.result_cache import ResultCache
from serving.runtimes import FeatureLookup, Ranker, Reranker, Retriever, limit_math_threads

P = ParamSpec("P")
R = TypeVar("R")


class AppConfig(BaseModel):
    """The Serve application's arguments (``args`` in serve_config.yaml)."""

    model_config = {"extra": "forbid"}

    mode: str = Field(default="", description="graph | fused; empty = RECSTACK_SERVE_MODE.")
    deadline_ms: float | None = Field(default=None, gt=0, le=10_000)
    experiments: list[Experiment] = Field(default_factory=list)
    rerank: RerankParams = Field(default_factory=RerankParams)


def build_backend(settings: Settings, config: AppConfig, callers: Callers) -> Backend:
    """The HTTP app's backend over ``callers``: the recommender with the configured deadline, experiments, rerank
    parameters and (RECSTACK_RESULT_CACHE_TTL_S > 0) the result cache."""
    deadline = (config.deadline_ms or settings.stage_deadline_ms) / 1000
    cache = ResultCache(settings) if settings.result_cache_ttl_s > 0 else None
    return Backend(settings, Recommender(callers, deadline, config.experiments, config.rerank, cache), callers)


def local_backend(settings: Settings | None = None, config: AppConfig | None = None) -> Backend:
    """Every stage in this process, as a fused replica runs them (also tests, benchmarks and probes)."""
    limit_math_threads()
    settings = settings or get_settings()
    retriever, ranker, lookup = Retriever(settings), Ranker(settings), FeatureLookup(settings)
    callers = in_process_callers(retriever, lookup, ranker, Reranker())
    backend = build_backend(settings, config or AppConfig(), callers)
    heap.settle(full=True)
    return backend


# -- Ray Serve --------------------------------------------------------------------------------------------------
# Serve's per-request access log line costs CPU on every hop; /metrics counts requests per endpoint and status.
# Turn it back on per deployment in the Serve config (logging_config.enable_access_log) when tracing by hand.
LOGGING: dict[str, Any] = {"enable_access_log": False}
# What each replica reserves, the one home of deployment sizes. A replica's num_cpus follows the CPU it burns per
# request, so that Ray's placement (and KubeRay's autoscaler, which adds a node when replicas cannot be placed)
# follows the real load. Measured through POST /recommend on the graph app (`python -m bench.bench_autoscale`,
# bench/reference/autoscale-20000u-5000i-500000e.json): CPU ms per request Ingress 25.1, Retriever 16.8, Reranker 7.3,
# FeatureLookup 3.7, Ranker 3.6 (the ingress parses and validates the HTTP request and serialises the handle calls;
# CatBoost over ~300 candidates is cheap). The two heavy ones get half a CPU, the rest a quarter. At the minimum (one
# replica each) the graph needs 1.5 CPUs, so it fits a 2-core laptop; at the maximum 1.5 + 4 x 1.0 = 5.5, two of
# rayservice.yaml's 4-CPU worker pods: load past one pod's worth asks for another node.
# The rerank is not a deployment: its work is ~0.7 ms of numpy a request, and a Serve hop cost more than that on each
# side. Measured at 1M users / 100k items, 25 requests/s through the balancer, CPU per request from the processes'
# counters (python -m bench.probe_graph): a Reranker replica 4.6 ms and the ingress 3.0 ms more to call it, p50 6.3 ms
# on the rerank hop against 0.7 ms in-process. In the ingress the graph's p50 went from 23.9 to 17.4 ms.
DEPLOYMENT_SIZES: dict[str, float] = {
    "Ingress": 0.5,
    "Retriever": 0.5,
    "FeatureLookup": 0.25,
    "Ranker": 0.25,
}
# Scale up within seconds of a rise, down after a minute of less load (Serve's default waits 10 minutes).
SCALING_DELAYS: dict[str, float] = {"upscale_delay_s": 10, "downscale_delay_s": 60}
# Stages: a stage replica runs one request at a time under its GIL (a few to 16 ms of CPU each), so more than one in
# flight means requests wait for it.
AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 1,
    **SCALING_DELAYS,
}
# The ingress holds each request for the whole pipeline (~55 ms at light load): 2 in flight is ~36 requests/s, about
# where its ~25 ms of CPU per request fills a core.
INGRESS_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 2,
    **SCALING_DELAYS,
}
# Past this many requests waiting at the proxy for an ingress replica, the proxy answers 503 at once (load shed)
# instead of letting every request wait until clients time out.
INGRESS_MAX_QUEUED = 32


def stage_options(name: str) -> dict[str, Any]:
    """Deployment options of one pipeline stage."""
    return {
        "name": name,
        "ray_actor_options": {"num_cpus": DEPLOYMENT_SIZES[name]},
        "max_ongoing_requests": 16,
        "logging_config": LOGGING,
        "autoscaling_config": AUTOSCALING,
    }


# Fused: the whole pipeline is one replica's work (~20 ms of CPU per request here, mostly under the GIL), so one
# replica saturates below 50 requests/s on its own; two use both cores (bench/bench_serving.py: @50 rps p50 689 ms
# with one replica, 37 ms with two).
FUSED_SIZE = 0.5  # what one fused replica reserves
FUSED_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 2,
    "max_replicas": 4,
    "target_ongoing_requests": 8,
    **SCALING_DELAYS,
}


def replica_setup(role: str) -> None:
    """First thing in every deployment's constructor: math libraries on one thread, loopback-only on a laptop,
    recstack's logs in the replica's log file, and this replica's metrics published for every replica's /metrics
    (serving/metrics.py)."""
    limit_math_threads()
    ray_runtime.bind_replica_servers_to_loopback()
    log_to_replica_file()
    metrics.start_publishing(role, lambda: stack.redis_client(get_settings()))


def log_to_replica_file() -> None:
    """recstack's log records (why a stage degraded an answer, a model not loaded) into this replica's Serve log
    file (logs/serve/replica_<app>_<deployment>_<id>.log) at their own level: Serve configures only its own logger
    in a replica, so they reached that file only through its capture of stderr, every warning as an INFO line."""
    serve_logger, ours = logging.getLogger("ray.serve"), logging.getLogger("recstack")
    for handler in serve_logger.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def on_the_loop(method: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """A stage's per-request method as a coroutine function: Serve then runs it on the replica's event loop instead of
    handing it to a thread of its pool and back, which cost 0.6 ms a hop at p50 (`python -m bench.probe_hop`:
    3.28 against 3.89 ms for an answer of 120 candidates, 7.21 against 7.79 ms after 4 ms of work). The loop is
    held while the method runs; a stage replica runs one request at a time under its GIL anyway, and a hung store
    ends at its client's timeout (RECSTACK_CONNECT_TIMEOUT_S) while the ingress degrades at the stage deadline."""

    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return method(*args, **kwargs)

    return call


# The per-request methods (retrieve, lookup, rank) run on the loop; the rest (readiness, the 5-second checks, similar
# items, the popular fallback) stay on Serve's threads.
@serve.deployment(**stage_options("Retriever"))
class RetrieverDeployment(Retriever):
    def __init__(self) -> None:
        replica_setup("Retriever")
        super().__init__(get_settings())
        heap.settle(full=True)

    retrieve = on_the_loop(Retriever.retrieve)  # type: ignore[assignment]


@serve.deployment(**stage_options("FeatureLookup"))
class LookupDeployment(FeatureLookup):
    def __init__(self) -> None:
        replica_setup("FeatureLookup")
        super().__init__(get_settings())  # warms the item cache: ready() once constructed
        heap.settle(full=True)

    lookup = on_the_loop(FeatureLookup.lookup)  # type: ignore[assignment]


@serve.deployment(**stage_options("Ranker"))
class RankerDeployment(Ranker):
    def __init__(self) -> None:
        replica_setup("Ranker")
        super().__init__(get_settings())
        heap.settle(full=True)

    rank = on_the_loop(Ranker.rank)  # type: ignore[assignment]


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": DEPLOYMENT_SIZES["Ingress"]},
    logging_config=LOGGING,
    max_ongoing_requests=64,
    max_queued_requests=INGRESS_MAX_QUEUED,
    autoscaling_config=INGRESS_AUTOSCALING,
)
@serve.ingress()
class Ingress:
    """HTTP ingress. With stage handles (graph mode) it calls them and reranks in-process; without (fused), it runs
    every stage in-process."""

    def __init__(self, config: dict[str, Any], *handles: Any) -> None:
        replica_setup("Ingress")
        settings = get_settings()
        app_config = AppConfig.model_validate(config)
        if handles:
            retriever, lookup, ranker = handles
            backend = build_backend(settings, app_config, handle_callers(retriever, lookup, ranker, Reranker()))
        else:
            backend = local_backend(settings, app_config)
        self.api = create_api(backend, settings)
        heap.settle(full=True)  # imports, registry, catalog columns: never walked by a collection mid-request

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.api


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder (``serve build|run serving.app:build_app``); ``args`` are AppConfig's fields."""
    try:
        config = AppConfig.model_validate(args or {})
    except ValidationError as err:
        raise ValueError(f"invalid serve application args: {json.dumps(err.errors(), default=str)}") from err
    mode = config.mode or get_settings().serve_mode
    payload = config.model_dump(mode="json")
    # serve.deployment turns each class into a Deployment; its type hints do not say so.
    ingress, stages = cast(Any, Ingress), cast(Any, (RetrieverDeployment, LookupDeployment, RankerDeployment))
    if mode == "graph":
        retriever, lookup, ranker = stages
        return ingress.bind(payload, retriever.bind(), lookup.bind(), ranker.bind())
    if mode != "fused":
        raise ValueError(f"mode must be 'graph' or 'fused', got {mode!r}")
    return ingress.options(autoscaling_config=FUSED_AUTOSCALING, ray_actor_options={"num_cpus": FUSED_SIZE}).bind(
        payload
    )


# Serve applications for `serve build` / `serve run` (binding is declarative: no I/O, no settings read):
#   serve build serving.app:graph_app -o serving/serve_config.yaml
#   serve run serving/serve_config.yaml        or        serve run serving.app:build_app mode=fused
graph_app = build_app({"mode": "graph"})
