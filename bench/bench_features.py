"""Benchmark: feature build and materialization throughput, and online lookup for 1 user + N candidate items.

    .venv/bin/python -m bench.bench_features --users 20000 --items 20000 --events 1000000

Compared in the same run, on the same random (user, items) requests:
  * feast:     FeatureStore.get_online_features(ranking views, full_feature_names=True)
  * pipelined: the simplest direct reader - one pipelined HMGET per entity, each value decoded as Feast does
  * recstack:  recstack.features.online.OnlineLookup (user hash + version in one round trip, items from memory)
All three are checked to return identical values before timing.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from pathlib import Path

import psycopg

from bench.common import bench_stack, percentiles_ms, report
from recstack import stack
from recstack.features import store as feast_store
from recstack.features.build import build_features
from recstack.features.materialize import materialize
from recstack.features.online import OnlineLookup, _decode, _mmh3_field, entity_key
from recstack.ingest.loader import load_batch
from recstack.ingest.synthetic import generate

USER_VIEWS = ("user_features", "user_realtime")
ITEM_VIEWS = ("item_features",)


def pipelined_baseline(lookup: OnlineLookup, user_id: str, item_ids: list[str]) -> dict[str, list]:
    """No cache: every entity's hash read in one pipeline, every value decoded on the request path."""
    client, project = lookup.client, lookup.project
    with client.pipeline(transaction=False) as pipe:
        for view in lookup.user_views:
            pipe.hmget(entity_key(view.join_key, user_id, project), [_mmh3_field(view.view, f) for f in view.features])
        for view in lookup.item_views:
            fields = [_mmh3_field(view.view, f) for f in view.features]
            for item_id in item_ids:
                pipe.hmget(entity_key(view.join_key, item_id, project), fields)
        replies = pipe.execute()
    out: dict[str, list] = {}
    position = 0
    for view in lookup.user_views:
        for feature, raw in zip(view.features, replies[position], strict=True):
            out[f"{view.view}__{feature}"] = [_decode(raw)] * len(item_ids)
        position += 1
    for view in lookup.item_views:
        rows = replies[position : position + len(item_ids)]
        position += len(item_ids)
        for index, feature in enumerate(view.features):
            out[f"{view.view}__{feature}"] = [_decode(row[index]) for row in rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--use-configured", action="store_true", help="Use the configured stack and its data.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/features.json"))
    args = parser.parse_args()

    figures: dict[str, object] = {}
    with bench_stack(args.use_configured) as settings:
        dsn = stack.postgres_dsn(settings)
        if not args.use_configured:
            with psycopg.connect(dsn) as conn:
                load_batch(conn, generate(users=args.users, items=args.items, events=args.events, seed=args.seed), "b")
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            built = build_features(conn)
        figures["feature_build_s"] = round(time.perf_counter() - started, 2)
        figures["feature_rows_built"] = sum(b.rows_added for b in built)
        feast_store.apply(settings)
        started = time.perf_counter()
        results = materialize(settings)
        seconds = time.perf_counter() - started
        entities = sum(r.entities for r in results)
        figures["materialize_s"] = round(seconds, 2)
        figures["materialize_entities"] = entities
        figures["materialize_entities_per_s"] = round(entities / seconds)

        store = feast_store.open_store(settings)
        client = stack.redis_client(settings)
        lookup = OnlineLookup.from_store(store, client, {v: None for v in USER_VIEWS}, {v: None for v in ITEM_VIEWS})
        with psycopg.connect(dsn) as conn:
            users = [r[0] for r in conn.execute("SELECT user_id FROM user_features GROUP BY user_id")]
            items = [r[0] for r in conn.execute("SELECT external_id FROM items ORDER BY item_id")]
        started = time.perf_counter()
        lookup.load_items(items)
        figures["lookup_item_cache_load_s"] = round(time.perf_counter() - started, 2)
        features = [
            f"{v}:{f}"
            for view in (*lookup.user_views, *lookup.item_views)
            for v, f in ((view.view, name) for name in view.features)
        ]

        rng = random.Random(args.seed)
        requests = [(rng.choice(users), rng.sample(items, args.candidates)) for _ in range(args.requests)]

        def feast_call(user_id: str, item_ids: list[str]) -> dict[str, list]:
            rows = [{"user_id": user_id, "item_id": i} for i in item_ids]
            return store.get_online_features(features=features, entity_rows=rows, full_feature_names=True).to_dict()

        for user_id, item_ids in requests[:5]:  # identical values before anything is timed
            expected = feast_call(user_id, item_ids)
            fast = lookup.lookup(user_id, item_ids).to_feast_dict(user_id)
            plain = pipelined_baseline(lookup, user_id, item_ids)
            for name, values in plain.items():
                assert fast[name] == expected[name] == values, name

        timings: dict[str, list[float]] = {"feast": [], "pipelined": [], "recstack": []}
        calls = {
            "feast": feast_call,
            "pipelined": lambda u, i: pipelined_baseline(lookup, u, i),
            "recstack": lambda u, i: lookup.lookup(u, i),
        }
        for user_id, item_ids in requests:  # interleaved so drift affects all three alike
            for name, call in calls.items():
                started = time.perf_counter()
                call(user_id, item_ids)
                timings[name].append(time.perf_counter() - started)

    if not args.use_configured:  # the generated data's size (a configured stack's is reported by its ingest step)
        figures.update({"users": args.users, "items": args.items, "events": args.events})
    figures["candidates_per_request"] = args.candidates
    figures["features_per_item"] = sum(len(v.features) for v in lookup.item_views)
    figures["features_per_user"] = sum(len(v.features) for v in lookup.user_views)
    for name, values in timings.items():
        for key, value in percentiles_ms(values).items():
            figures[f"lookup_{name}_{key}_ms"] = value
    figures["speedup_vs_feast_p50"] = round(
        percentiles_ms(timings["feast"])["p50"] / percentiles_ms(timings["recstack"])["p50"], 1
    )
    figures["peak_rss_mib_client"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report(figures, args.out)


if __name__ == "__main__":
    main()
