"""Per-request cost of the retrieve stage on the configured stack's data (RECSTACK_*; a trained stack, such as a
bench_quality home brought up with `recstack up`): the user's history read from Redis (recstack.tables.history)
against aggregated from the events table (what every request did before), and the whole stage
(serving.runtimes.Retriever.retrieve) each way. In process, one request at a time, so the figures are CPU and
round trips, not queueing.

    python -m bench.bench_retrieve [--users 300] [--out bench/results/retrieve.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import psycopg

from bench.common import percentiles_ms, report
from recstack import stack
from recstack.settings import get_settings
from recstack.stages.retrieve import Filters
from recstack.tables import history

RESULTS = Path(__file__).with_name("results") / "retrieve.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from serving.runtimes import Retriever, limit_math_threads

    limit_math_threads()
    settings = get_settings()
    client = stack.redis_client(settings)
    figures: dict[str, object] = {}
    with psycopg.connect(stack.postgres_dsn(settings), autocommit=True) as conn:
        started = time.perf_counter()
        figures["history_rebuild_users"] = history.rebuild(conn, client)  # incremental: what materialize adds
        figures["history_rebuild_s"] = round(time.perf_counter() - started, 2)
        rows = conn.execute(
            "SELECT u.external_id, count(*) FROM events e JOIN users u ON u.user_id = e.user_id "
            "GROUP BY 1 ORDER BY random() LIMIT %s",
            (args.users,),
        ).fetchall()
        users = [r[0] for r in rows]
        counts = [int(r[1]) for r in rows]
        figures["events_per_user"] = {"mean": round(float(np.mean(counts)), 1), "max": max(counts)}
        figures["history_postgres"] = percentiles_ms(_time(lambda u: history.from_postgres(conn, u), users))
    figures["history_redis"] = percentiles_ms(_time(lambda u: history.read(client, u), users))

    retriever = Retriever(settings)
    for user in users[:20]:  # warm: pool connections, neighbours loaded
        retriever.retrieve(user, Filters(), [])
    figures["retrieve_redis_history"] = percentiles_ms(_time(lambda u: retriever.retrieve(u, Filters(), []), users))
    retriever.stored_history = lambda user_id: None  # type: ignore[method-assign]  # every request aggregates Postgres
    retriever.redis = _NoFill()  # type: ignore[assignment]
    figures["retrieve_postgres_history"] = percentiles_ms(_time(lambda u: retriever.retrieve(u, Filters(), []), users))
    report(figures, args.out)
    print(f"figures in {args.out}")


class _NoFill:
    def set(self, *args: object, **kwargs: object) -> None:
        return None


def _time(call, users: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for user in users:
        started = time.perf_counter()
        call(user)
        out.append(time.perf_counter() - started)
    return out


if __name__ == "__main__":
    main()
