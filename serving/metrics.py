"""Prometheus metrics of the recommendation API, whole across replicas.

Each process (a fused replica; in graph mode the ingress and every stage replica) counts in its own registry. A
replica publishes a snapshot of it to Redis every ``PUBLISH_S`` seconds under its own key, expiring after
``SNAPSHOT_TTL_S`` (a replica that died drops out), and ``GET /metrics`` answers with the series of every live
replica, each labelled ``replica``: whichever replica a scrape reaches, it sees the whole deployment, including the
retriever's fallbacks and the ranker's model version in graph mode. Totals are ``sum without (replica)``; the
answering replica's own series are current, the others up to ``PUBLISH_S`` old.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

import redis as redis_lib
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.5, 1.0, 2.5)

STAGE_SECONDS = Histogram(
    "recstack_stage_seconds", "Latency of one serving stage", ["stage"], buckets=BUCKETS, registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "recstack_request_seconds", "Latency of an HTTP request", ["endpoint"], buckets=BUCKETS, registry=REGISTRY
)
RESPONSES = Counter("recstack_responses_total", "HTTP responses", ["endpoint", "status"], registry=REGISTRY)
FALLBACKS = Counter("recstack_fallbacks_total", "Stage fallbacks taken", ["kind"], registry=REGISTRY)
DEGRADED = Counter("recstack_degraded_responses_total", "Recommendations answered degraded", registry=REGISTRY)
FEEDBACK = Counter("recstack_feedback_events_total", "Feedback events", ["status"], registry=REGISTRY)
# Hit rate = hits / (hits + misses); a Redis error on the cache path counts as a miss (and as a fallback).
RESULT_CACHE_HITS = Counter(
    "recstack_result_cache_hits", "Recommendations answered from the result cache", registry=REGISTRY
)
RESULT_CACHE_MISSES = Counter(
    "recstack_result_cache_misses", "Result cache lookups that found no usable slate", registry=REGISTRY
)
MODEL_INFO = Info("recstack_model", "The promoted ranker version this replica serves", registry=REGISTRY)

KEY_PREFIX = "recstack:metrics:"
# The live replicas' names, scored by when each last published: a scrape reads this index, never SCANs the keyspace
# (which holds every user's online features and history: at 1M users a SCAN for the snapshots took 4.3 s a scrape).
INDEX_KEY = "recstack:metrics-replicas"
PUBLISH_S = 5.0
SNAPSHOT_TTL_S = 30

_replica = f"local-{socket.gethostname()}-{os.getpid()}"  # this process's name in the merged series
_publisher: threading.Thread | None = None
_publisher_lock = threading.Lock()


def replica_name() -> str:
    return _replica


def snapshot() -> str:
    """This process's series in the Prometheus text format."""
    return generate_latest(REGISTRY).decode()


def publish(client: redis_lib.Redis) -> None:
    """Write this process's snapshot under its own key (expiring: a replica that died drops out) and its name in the
    index of live replicas, dropping the names not published for ``SNAPSHOT_TTL_S``."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.set(KEY_PREFIX + _replica, snapshot(), ex=SNAPSHOT_TTL_S)
    pipe.zadd(INDEX_KEY, {_replica: now})
    pipe.zremrangebyscore(INDEX_KEY, "-inf", now - SNAPSHOT_TTL_S)
    pipe.execute()


def start_publishing(role: str, connect: Callable[[], redis_lib.Redis]) -> None:
    """Name this process ``<role>-<host>-<pid>`` and publish its snapshot every ``PUBLISH_S`` seconds from a daemon
    thread (once per process; a Redis error skips one round, it never reaches a request)."""
    global _replica, _publisher
    with _publisher_lock:
        if _publisher is not None:
            return
        _replica = f"{role}-{socket.gethostname()}-{os.getpid()}"

        def loop() -> None:
            client = connect()
            while True:
                try:
                    publish(client)
                except redis_lib.RedisError as err:
                    log.debug("metrics snapshot not published (%s)", err)
                time.sleep(PUBLISH_S)

        _publisher = threading.Thread(target=loop, name="metrics-publisher", daemon=True)
        _publisher.start()


def published(client: redis_lib.Redis) -> dict[str, str]:
    """Every other live replica's latest snapshot, by replica name."""
    live: list[bytes] = client.zrangebyscore(INDEX_KEY, time.time() - SNAPSHOT_TTL_S, "+inf")  # type: ignore[assignment]
    names = [name for name in map(_text, live) if name != _replica]
    values = client.mget([KEY_PREFIX + name for name in names]) if names else []  # one round trip for all
    return {name: _text(v) for name, v in zip(names, values, strict=True) if v is not None}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge(snapshots: dict[str, str]) -> bytes:
    """One exposition of several replicas' snapshots, every sample labelled with its replica."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(snapshots.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, "replica": replica}, sample.value, sample.timestamp)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))  # type: ignore[arg-type]
    return generate_latest(registry)


def render(client: redis_lib.Redis | None = None) -> bytes:
    """This replica's current series and every other live replica's published ones (only its own when Redis
    cannot be read)."""
    snapshots = {_replica: snapshot()}
    if client is not None:
        try:
            snapshots.update(published(client))
        except redis_lib.RedisError as err:
            log.debug("other replicas' metrics not read (%s)", err)
    return merge(snapshots)
