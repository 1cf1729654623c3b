"""/metrics is whole across replicas: every live replica's snapshot, each series labelled with its replica."""

from __future__ import annotations

import time

import redis
from prometheus_client import CollectorRegistry, Counter, Info, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving import metrics


def _replica_text(responses: int, version: str) -> str:
    """The snapshot another replica would publish."""
    registry = CollectorRegistry()
    Counter("recstack_responses_total", "HTTP responses", ["endpoint", "status"], registry=registry).labels(
        "/recommend", "200"
    ).inc(responses)
    Info("recstack_model", "model", registry=registry).info({"version": version})
    return generate_latest(registry).decode()


def _samples(text: bytes, name: str) -> dict[str, dict[str, str]]:
    return {
        s.labels["replica"]: {**s.labels, "value": str(s.value)}
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == name
    }


class FakeRedis:
    """The replica index (names scored by publish time) and the snapshots, as publish writes them."""

    def __init__(
        self, values: dict[str, str], fail: bool = False, published_at: dict[str, float] | None = None
    ) -> None:
        self.values, self.fail = values, fail
        now = time.time()
        self.index = published_at or {k.removeprefix(metrics.KEY_PREFIX): now for k in values}

    def zrangebyscore(self, key: str, low: float, high: str) -> list[bytes]:
        if self.fail:
            raise redis.ConnectionError("down")
        assert key == metrics.INDEX_KEY
        return [name.encode() for name, at in self.index.items() if at >= low]

    def mget(self, keys: list[str]) -> list[bytes | None]:
        values = [self.values.get(k) for k in keys]
        return [v.encode() if v is not None else None for v in values]


def test_a_scrape_shows_every_replicas_series_labelled_by_replica() -> None:
    merged = metrics.merge({"Ingress-a-1": _replica_text(3, "v1"), "Ranker-b-2": _replica_text(5, "v2")})
    responses = _samples(merged, "recstack_responses_total")
    assert {r: v["value"] for r, v in responses.items()} == {"Ingress-a-1": "3.0", "Ranker-b-2": "5.0"}
    versions = _samples(merged, "recstack_model_info")
    assert {r: v["version"] for r, v in versions.items()} == {"Ingress-a-1": "v1", "Ranker-b-2": "v2"}


def test_render_adds_the_published_replicas_to_its_own_current_series() -> None:
    metrics.FEEDBACK.labels("stored").inc()
    own = metrics.replica_name()
    client = FakeRedis(
        {
            metrics.KEY_PREFIX + "Ranker-b-2": _replica_text(5, "v2"),
            metrics.KEY_PREFIX + own: _replica_text(99, "stale"),  # its own old snapshot: the live one wins
        }
    )
    merged = metrics.render(client)  # type: ignore[arg-type]
    versions = _samples(merged, "recstack_model_info")
    assert versions["Ranker-b-2"]["version"] == "v2" and versions.get(own, {}).get("version") != "stale"
    assert own in _samples(merged, "recstack_feedback_events_total")


def test_render_without_redis_is_this_replicas_series_alone() -> None:
    metrics.FEEDBACK.labels("stored").inc()
    merged = metrics.render(FakeRedis({}, fail=True))  # type: ignore[arg-type]
    assert set(_samples(merged, "recstack_feedback_events_total")) == {metrics.replica_name()}


def test_a_replica_that_stopped_publishing_drops_out_of_the_scrape() -> None:
    now = time.time()
    client = FakeRedis(
        {
            metrics.KEY_PREFIX + "Ranker-b-2": _replica_text(5, "v2"),
            metrics.KEY_PREFIX + "Ranker-c-3": _replica_text(7, "v3"),
        },
        published_at={"Ranker-b-2": now, "Ranker-c-3": now - metrics.SNAPSHOT_TTL_S - 1},
    )
    assert set(metrics.published(client)) == {"Ranker-b-2"}  # type: ignore[arg-type]
