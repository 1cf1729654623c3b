"""Prometheus metrics of the recommendation API (one registry per process, exposed at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest

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
MODEL_INFO = Info("recstack_model", "The ranker version loaded most recently", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
