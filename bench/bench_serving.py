"""Latency of POST /recommend (4 real stages: pgvector retrieval of ~300 candidates -> Feast online features ->
CatBoost ranking -> rerank, k=10) at constant request rates, in both Serve shapes, plus the in-process floor.

Needs a stack with data, features materialized and a promoted model (`recstack demo --no-serve`, or the README's
scale steps). Usage (with the stack's RECSTACK_* environment):

    python -m bench.bench_serving [--rates 25 50 100] [--seconds 20] [--modes fused fused-direct graph]
        [--cache off on] [--users 2000] [--rounds 1]

Open-loop load: requests start on a fixed schedule whatever the answers do (no coordinated omission), from one
asyncio client in this process. Writes bench/results/serving.json.

Modes: ``fused`` and ``graph`` go through Serve's HTTP proxy; ``-front`` through the balancer `recstack serve` puts on
the API port on a local Ray (serving/front.py: what its users call). ``-direct`` sends the
requests to the ingress replicas' own HTTP servers instead (Ray Serve's direct ingress, on with
RAY_SERVE_THROUGHPUT_OPTIMIZED; the targets come from Serve's target groups, what a cluster load balancer is given),
spread round robin by the client: the proxy hop is skipped, as behind a load balancer in production.

Result cache: each mode runs without it (``off``: RECSTACK_RESULT_CACHE_TTL_S=0) and with it (``on``: the configured
TTL, 30 s by default); rows with the cache are named ``<mode>+cache`` and carry the hit rate the client saw (answers
with ``cached: true`` among the 200s). The hit rate follows from the load, not from the cache: requests pick a random
user of ``--users`` sampled ones, so fewer users (or a longer run at a higher rate) repeat more requests within the TTL.

Rounds: the machine's speed drifts between runs as much as the shapes differ, so ``--rounds N`` runs the modes N times
in turn (A B, B A, A B, ...) and reports each mode's p50 over the first mode's in each round and the median of those
(``p50_ratios``; ``--modes fused-front graph-front`` gives the graph over fused ratio of issue 16).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from bench.common import free_port, open_loop, percentiles_ms, report
from recstack import stack
from recstack.settings import get_settings

RESULTS = Path(__file__).with_name("results") / "serving.json"


def sample_users(n: int) -> list[str]:
    import psycopg

    with psycopg.connect(stack.postgres_dsn(get_settings())) as conn:
        rows = conn.execute("SELECT external_id FROM users ORDER BY random() LIMIT %s", (n,)).fetchall()
    return [r[0] for r in rows]


async def constant_rate(urls: list[str], users: list[str], rate: float, seconds: float) -> dict[str, object]:
    """Requests at ``rate`` per second for ``seconds``, spread round robin over ``urls``."""
    t0 = time.monotonic()
    answers = await open_loop(urls, users, [(rate, seconds)], t0)
    statuses: dict[int, int] = {}
    for answer in answers:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    answered = [a.latency_s for a in answers if a.status]
    ok = [a for a in answers if a.status == 200]
    return {
        **(percentiles_ms(answered) if answered else {}),
        "requests": len(answers),
        "achieved_rps": round(len(answers) / (time.monotonic() - t0), 1),
        "statuses": statuses,
        "degraded": sum(a.degraded for a in answers),
        "cache_hit_rate": round(sum(a.cached for a in ok) / len(ok), 3) if ok else None,
    }


def in_process_p50(users: list[str], n: int = 300) -> dict[str, float]:
    """The same stage classes called directly in one process (no HTTP, no Serve): the floor."""
    from serving.app import AppConfig, local_backend
    from serving.schemas import RecommendRequest

    settings = get_settings().model_copy(update={"result_cache_ttl_s": 0})  # the stages' floor, not the cache's
    recommender = local_backend(settings, AppConfig(deadline_ms=5000)).recommender

    async def run() -> list[float]:
        out = []
        for i in range(n):
            started = time.perf_counter()
            await recommender.recommend(RecommendRequest(user_id=users[i % len(users)], k=10))
            out.append(time.perf_counter() - started)
        return out[20:]  # first calls warm caches

    return percentiles_ms(asyncio.run(run()))


def direct_targets(app: str) -> list[str]:
    """The ingress replicas' own HTTP servers, from Serve's target groups (what a load balancer is given)."""
    from serving.front import target_ports

    for _ in range(60):
        ports = target_ports(app, replicas_only=True)
        if ports:
            return [f"http://127.0.0.1:{port}" for port in ports]
        time.sleep(1)
    raise RuntimeError("no direct ingress targets: is RAY_SERVE_THROUGHPUT_OPTIMIZED on?")


def serve_mode(mode: str, port: int, num_cpus: int | None = None) -> list[str]:
    """Start the app in ``mode`` (graph | fused), on a local Ray started with RAY_SERVE_THROUGHPUT_OPTIMIZED as
    ``recstack serve`` would (or forced with a "-tp" / "-default" suffix, to compare both); the URLs to load ("-direct":
    the ingress replicas' own servers). ``num_cpus``: the local node's logical CPUs (default: its cores)."""
    import os

    import ray

    from serving.app import build_app
    from serving.cli import ray_serve_env
    from serving.front import run_app

    shape, *flags = mode.split("-")
    env = ray_serve_env(get_settings())
    if "tp" in flags or "default" in flags:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if "tp" in flags else "0"
    if ray.is_initialized():
        ray.shutdown()
    os.environ.update(env)  # Serve reads it at import, in the Ray processes started below
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    run_app(build_app({"mode": shape}), "127.0.0.1", port, "recstack", "front" in flags)  # as `recstack serve` does
    url = f"http://127.0.0.1:{port}"
    import requests

    for _ in range(120):
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return direct_targets("recstack") if "direct" in flags else [url]
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{mode} app not ready")


def row_name(mode: str, cache: str) -> str:
    """A mode's rows in the figures: ``<mode>`` without the result cache, ``<mode>+cache`` with it."""
    return f"{mode}+cache" if cache == "on" else mode


def run_mode(mode: str, cache: str, users: list[str], rates: list[float], seconds: float) -> dict[str, object]:
    """One Ray start serving ``mode`` with the result cache ``cache`` (off | on): the load at each of ``rates``."""
    import os

    import ray
    from ray import serve

    ttl = get_settings().result_cache_ttl_s
    name = row_name(mode, cache)
    # Replicas read their settings from the environment of the Ray started below.
    os.environ["RECSTACK_RESULT_CACHE_TTL_S"] = str(ttl if cache == "on" else 0)
    figures: dict[str, object] = {f"{name}_result_cache_ttl_s": ttl if cache == "on" else 0}
    urls = serve_mode(mode, free_port())
    figures[f"{name}_targets"] = len(urls)
    asyncio.run(constant_rate(urls, users, 10, 5))  # warm-up
    best = None
    for rate in rates:
        result = asyncio.run(constant_rate(urls, users, rate, seconds))
        figures[f"{name}@{rate:g}rps"] = result
        print(f"{name}@{rate:g}rps {result}", flush=True)
        if float(result["p99"]) < 100:  # type: ignore[arg-type]
            best = rate
    figures[f"{name}_highest_rate_p99_under_100ms"] = best
    serve.delete("recstack")
    serve.shutdown()
    ray.shutdown()
    return figures


def p50_ratios(rounds: list[dict[str, object]], modes: list[str], rates: list[float]) -> dict[str, object]:
    """Each later mode's p50 over the first mode's, per round and rate, and the median over rounds: the machine's
    speed drifts between runs about as much as the shapes differ, so only modes measured side by side compare."""
    out: dict[str, object] = {}
    first, *others = modes
    for mode in others:
        for rate in rates:
            ratios = []
            for figures in rounds:
                a, b = figures.get(f"{mode}@{rate:g}rps"), figures.get(f"{first}@{rate:g}rps")
                if isinstance(a, dict) and isinstance(b, dict) and "p50" in a and "p50" in b:
                    ratios.append(round(float(a["p50"]) / float(b["p50"]), 3))
            if ratios:
                out[f"{mode}/{first}@{rate:g}rps"] = {"per_round": ratios, "median": statistics.median(ratios)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[25, 50, 100])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["fused", "fused-direct", "graph"],
        help='graph | fused, optionally with "-front" (the balancer recstack serve starts), "-direct" (skip the proxy) '
        'and "-tp" or "-default" (force RAY_SERVE_THROUGHPUT_OPTIMIZED on or off)',
    )
    parser.add_argument(
        "--cache",
        nargs="+",
        choices=["off", "on"],
        default=["off", "on"],
        help="run each mode without the result cache (TTL 0) and/or with it (the configured TTL)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the modes this many times, in turn (A B, B A, A B, ...), and report each mode's p50 over the first "
        "mode's per round and its median",
    )
    parser.add_argument("--users", type=int, default=2000, help="users sampled; each request picks one at random")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    users = sample_users(args.users)
    figures: dict[str, object] = {"users_sampled": len(users), "in_process": in_process_p50(users)}
    rounds: list[dict[str, object]] = []
    for n in range(args.rounds):
        this: dict[str, object] = {}
        for mode in args.modes if n % 2 == 0 else args.modes[::-1]:
            for cache in args.cache:
                this.update(run_mode(mode, cache, users, args.rates, args.seconds))
        rounds.append(this)
    figures.update(rounds[0])
    if args.rounds > 1:
        figures["rounds"] = rounds
        names = [row_name(m, c) for m in args.modes for c in args.cache]
        figures["p50_ratios"] = p50_ratios(rounds, names, args.rates)
    report(figures, args.out)
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
