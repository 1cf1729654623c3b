"""Benchmark: synthetic generation + bulk load into Postgres, against row-by-row inserts in the same run.

    .venv/bin/python -m bench.bench_ingest --users 100000 --items 20000 --events 5000000

Starts its own embedded stack in a temporary RECSTACK_HOME (free ports) unless --use-configured is given,
prints the figures and writes them as JSON (--out).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import psycopg

from bench.common import bench_stack, report
from recstack import stack
from recstack.ingest.loader import load_batch
from recstack.ingest.synthetic import generate


def row_insert_baseline(dsn: str, batch_events, rows: int) -> float:  # type: ignore[no-untyped-def]
    """Events/s of the simplest loader doing the same work: one INSERT per row (pipelined by executemany) that
    resolves the external ids, into a logged scratch copy of the events table."""
    sample = batch_events.head(rows)
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS events_baseline")
        conn.execute("CREATE TABLE events_baseline (LIKE events INCLUDING ALL)")
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events_baseline (event_id, user_id, item_id, event_type, value, occurred_at, context) "
                "SELECT %s, u.user_id, i.item_id, %s, %s, %s, %s FROM users u, items i "
                "WHERE u.external_id = %s AND i.external_id = %s ON CONFLICT (event_id) DO NOTHING",
                [
                    (
                        r.event_id,
                        r.event_type,
                        None if r.value != r.value else r.value,
                        r.occurred_at,
                        r.context,
                        r.user_external_id,
                        r.item_external_id,
                    )
                    for r in sample.itertuples()
                ],
            )
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE events_baseline")
        conn.commit()
        return rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--baseline-rows", type=int, default=20_000)
    parser.add_argument("--use-configured", action="store_true", help="Use the configured stack (RECSTACK_*).")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.json"))
    args = parser.parse_args()

    with bench_stack(args.use_configured) as settings:
        dsn = stack.postgres_dsn(settings)
        started = time.perf_counter()
        batch = generate(users=args.users, items=args.items, events=args.events, seed=args.seed)
        generate_s = time.perf_counter() - started
        with psycopg.connect(dsn) as conn:
            loaded = load_batch(conn, batch, "bench")
        rerun_started = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            rerun = load_batch(conn, batch, "bench-rerun")
        rerun_s = time.perf_counter() - rerun_started
        baseline_rps = row_insert_baseline(dsn, batch.events, args.baseline_rows)

    load_rps = loaded.events_loaded / loaded.seconds
    figures = {
        "users": args.users,
        "items": args.items,
        "events": args.events,
        "generate_s": round(generate_s, 1),
        "load_s": round(loaded.seconds, 1),
        "total_s": round(generate_s + loaded.seconds, 1),
        "events_loaded": loaded.events_loaded,
        "load_events_per_s": round(load_rps),
        "rerun_s": round(rerun_s, 1),
        "rerun_events_added": rerun.events_loaded,
        "baseline_row_insert_events_per_s": round(baseline_rps),
        "baseline_extrapolated_s": round(args.events / baseline_rps, 1),
        "peak_rss_mib_client": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    report(figures, args.out)


if __name__ == "__main__":
    main()
